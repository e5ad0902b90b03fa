"""Base training only (STEPS steps) with concept temperature T, top-k K and optional ReproduceConfig
fields (JSON), then held-out ImageNet, COCO val and CUB zero-shot. Usage: everyday_base.py T K STEPS [JSON]."""
import sys, json, torch, random, numpy as np, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from training.default_model import ReproduceConfig, Pipeline
from training.everyday import EVERYDAY_TEMPLATES
T, K, steps = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
cfg = ReproduceConfig(out="runs/experiments/everyday-base", n_pairs=200, awa2_pairs=100, coco_pairs=50, base_steps=steps, **extra)
pl = Pipeline(cfg)
pl.model.visual.concepts.temperature = T; pl.model.visual.concepts.top_k = K
pl.image_features(); pl.texts()
m = pl.model; ev = pl.everyday; cls = pl.imagenet
held = [i for i in range(1000) if i not in set(pl.seen_imagenet)]
from training.default_model import gloss_caption; gloss = {c.label: gloss_caption(c) for c in cls.classes}
def evaluate(tag):
    with torch.no_grad():
        def img(paths): return F.normalize(m.visual.embed(pl.img(paths)), dim=-1)
        def cemb(names, with_gloss=False):
            ps = [t.format(n) for n in names for t in EVERYDAY_TEMPLATES]
            e = F.normalize(pl.encode_texts(ps), dim=-1).reshape(len(names), len(EVERYDAY_TEMPLATES), -1)
            if with_gloss:
                g = F.normalize(pl.encode_texts([gloss[n] for n in names]), dim=-1)[:, None]
                e = torch.cat([e, g], 1)
            return F.normalize(e.mean(1), dim=-1)
        x = img(ev.imagenet_paths)
        a = ((x @ cemb(ev.imagenet_labels).t()).argmax(1) == torch.arange(200)).float().mean().item()
        b = ((x @ cemb(ev.imagenet_labels, True).t()).argmax(1) == torch.arange(200)).float().mean().item()
        y = img(ev.coco_paths); top = (y @ cemb(ev.coco_names).t()).argmax(1)
        c = np.mean([ev.coco_names[i] in cats for i, cats in zip(top.tolist(), ev.coco_categories)])
        mm = pl.metrics(pl.val_imgs, pl.val_pairs, sorted(pl.train_imgs))
        tm = pl.metrics(pl.test_photos, pl.test_pairs)
        print(f"{tag}: heldout names {a:.3f} +gloss {b:.3f} | coco {c:.3f} | cub val zs {mm['zero_shot']:.3f} cub test zs {tm['zero_shot']:.3f}", flush=True)
pl.text_layers_train = False
pl.init_concepts()
with torch.no_grad():
    xs = pl.img(ev.imagenet_paths[:50])
    print("norms: mlp", m.visual.head(xs).norm(dim=-1).mean().item(), "concepts", m.visual.concepts(xs).norm(dim=-1).mean().item())
    h = m.visual.head; saved = [p.clone() for p in h.parameters()]
    for p in h.parameters(): p.zero_()
evaluate("ConSE only (init)")
with torch.no_grad():
    for p, s in zip(h.parameters(), saved): p.copy_(s)
pl.train_base()
evaluate(f"base T={T} k={K} steps={steps} {extra}")
