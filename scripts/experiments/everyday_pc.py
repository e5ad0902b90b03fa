"""Base (cached by its config) then PC-CLIP variants, each evaluated on the everyday sets at the
WiSE-FT alpha the rule picks and at alpha 1. Usage: everyday_pc.py VARIANTS_JSON TAG [BASE_JSON].
Prints held-out ImageNet (names; names+parent+gloss prompts), COCO val, animal difference and
size Spearman, CUB reserved difference and CUB test zero-shot."""
import hashlib, json, os, sys, time
import numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from training.default_model import Pipeline, ReproduceConfig
from training.evaluate import EmbeddedModel
from training import evaluate_everyday as ee

EXP = os.environ.get("PCCLIP_EXP_DIR", "runs/experiments"); os.makedirs(EXP, exist_ok=True)
variants, tag = json.loads(sys.argv[1]), sys.argv[2]
base_over = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
cfg = ReproduceConfig(out=EXP + "/pc", **base_over)
pl = Pipeline(cfg); pl.image_features(); pl.texts()
m, ev, cls = pl.model, pl.everyday, pl.imagenet
bp = f"{EXP}/base-{hashlib.sha1(json.dumps(base_over, sort_keys=True).encode()).hexdigest()[:8]}.pt"
if not base_over and os.environ.get("BASE_FROM_SHIPPED"):  # the shipped base = this config's base (fp16-stored)
    from models.loading import load_model
    m.load_state_dict(load_model("pcclip-mini:base").model.state_dict())
    pl.base_state = {k: v.clone() for k, v in m.state_dict().items()}
    pl.base_keys = sorted(n for n, _ in m.named_parameters() if n.startswith(("visual.head", "visual.concepts.embeddings", "text.head")) or n == "logit_scale") + ["visual.concepts.index"]
    pl.text_layers_train = False
elif os.path.exists(bp):
    d = torch.load(bp); pl.base_state, pl.base_keys = d["state"], d["keys"]; m.load_state_dict(pl.base_state)
    pl.text_layers_train = False
else:
    pl.train_base(); torch.save({"state": pl.base_state, "keys": pl.base_keys}, bp)
by_label = {c.label: c for c in cls.classes}
pair_sets = [ee.sample_animal_pairs(ev, 500, s) for s in range(3)]

@torch.no_grad()
def everyday(name):
    def enc(texts):
        u = list(dict.fromkeys(texts)); out = {}
        for i in range(0, len(u), 128):
            e = F.normalize(m.encode_text(torch.from_numpy(pl.loaded.tokenizer(u[i:i + 128]))), dim=-1).numpy()
            out.update(zip(u[i:i + 128], e))
        return np.stack([out[t] for t in texts])
    paths = ev.paths()
    imgs = dict(zip(paths, F.normalize(m.visual.embed(pl.img(paths)), dim=-1).numpy()))
    em = EmbeddedModel(name, name, pl.loaded, enc, imgs)
    x = em.image_matrix(ev.imagenet_paths)
    rich = ee.class_embeddings(em, ev.imagenet_labels)
    rich = rich + enc([f"a photo of a {n}, a kind of {by_label[n].parent}." for n in ev.imagenet_labels]) \
        + enc([f"a photo of a {n}, {by_label[n].gloss}." for n in ev.imagenet_labels])
    r = {"in_names": ee.imagenet_heldout_top1(em, ev),
         "in_rich": float(np.mean((x @ rich.T).argmax(1) == np.arange(len(rich)))),
         "coco": ee.coco_top1(em, ev),
         "animal_diff": ee.animal_difference(em, pair_sets)["accuracy"]["mean"],
         "animal_size": ee.animal_size_spearman(em, ev)}
    t = pl.metrics(pl.test_photos, pl.test_pairs)
    r.update(cub_zs=t["zero_shot"], cub_diff=t["difference"])
    return {k: round(float(v), 3) for k, v in r.items()}

print("BASE", json.dumps(everyday("base")), flush=True)
for v in variants:
    t0 = time.time(); m.load_state_dict(pl.base_state)
    for k, val in v.items():
        setattr(cfg, k, val)
    pl.train_pcclip(); sw = pl.sweep()
    res = {"variant": v, "chosen": sw["chosen_alpha"], "at_chosen": everyday("pc")}
    pl.set_alpha(1.0); res["at_1"] = everyday("pc1")
    res["sec"] = round(time.time() - t0)
    print("RESULT", tag, json.dumps(res), flush=True)
    with open(f"{EXP}/{tag}.jsonl", "a") as f:
        f.write(json.dumps(res) + "\n")
    for k in v:
        setattr(cfg, k, getattr(ReproduceConfig(), k))
