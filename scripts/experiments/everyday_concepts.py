"""Concept-head settings on validation: ConSE (no training) with the untrained text tower's name
embeddings, top-1 of 100 seen ImageNet classes treated as unseen (100-way) and of the 200 held-out
classes, by temperature T and top-k. Chose T=3, k=10 on the 100 validation classes."""
import sys, torch, random, numpy as np, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from training.default_model import ReproduceConfig, Pipeline
from training.everyday import EVERYDAY_TEMPLATES
cfg = ReproduceConfig(out="runs/experiments/concepts", n_pairs=200, awa2_pairs=100, coco_pairs=50, max_classes=8, max_photos_per_class=2)
pl = Pipeline(cfg); pl.image_features(); pl.texts(); pl.text_layers_train = False
m = pl.model; cls = pl.imagenet
held = [i for i in range(1000) if i not in set(pl.seen_imagenet)]
seen = pl.seen_imagenet
with torch.no_grad():
    logits = m.visual.concepts.classifier(pl.img([c.image for c in cls.classes]))
    prompts = {i: [t.format(cls[i].label) for t in EVERYDAY_TEMPLATES] for i in range(1000)}
    pl.text.texts  # all held-out prompts are in the table
    E = torch.zeros(1000, 384)
    E[seen] = F.normalize(pl.class_text_embeddings(prompts, seen), dim=-1)
    E[held] = F.normalize(pl.class_text_embeddings(prompts, held), dim=-1)
    rng = np.random.default_rng(0); val = sorted(rng.choice(seen, 100, replace=False).tolist()); tr = [i for i in seen if i not in set(val)]
    def conse(train_idx, test_idx, T, k):
        lg = logits[test_idx][:, train_idx] / T
        if k:
            kth = lg.topk(k, dim=1).values[:, -1:]
            lg = lg.masked_fill(lg < kth, float("-inf"))
        e = F.normalize(lg.softmax(1) @ E[train_idx], dim=-1)
        return ((e @ E[test_idx].t()).argmax(1) == torch.arange(len(test_idx))).float().mean().item()
    for T in (0.5, 1, 2, 3, 5):
        print(T, [(k, round(conse(tr, val, T, k), 3)) for k in (0, 3, 10, 30)], "heldout", [(k, round(conse(seen, held, T, k), 3)) for k in (0, 10)], flush=True)
