"""Comparative prompting analysis on a trained state: gains vs hints per pair and alpha, on validation
(5, 10 and 20 most confused pairs) and test (5 pairs, as the evaluation)."""
import os, sys, random, numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
EXP = os.environ.get("PCCLIP_EXP_DIR", "runs/experiments"); os.makedirs(EXP, exist_ok=True)
from training.default_model import Pipeline, ReproduceConfig
from training.records import CAPTION_TEMPLATES, class_caption_name
from training.evaluate import confusion_matrix, most_confused_pairs
from models import difference as dm
state_file, mppc = sys.argv[1], (int(sys.argv[2]) if len(sys.argv) > 2 else 12)
cfg = ReproduceConfig(out=EXP + "/runcp", max_photos_per_class=mppc, write_outputs=False)
for kv in sys.argv[3:]:
    k, v = kv.split("="); setattr(cfg, k, type(getattr(cfg, k))(v) if getattr(cfg, k) is not None else int(v))
pl = Pipeline(cfg); pl.image_features(); pl.texts()
d = torch.load(EXP + "/base.pt"); pl.base_state = d["state"]; pl.model.load_state_dict(d["state"])
if state_file != "base":
    s = torch.load(state_file); pl.pc_state, pl.pc_keys = s["pc_state"], s["pc_keys"]; pl.set_alpha(s["alpha"])
def enc(texts):
    from training.default_model import TextTable
    missing = [t for t in texts if t not in pl.text.index]
    with torch.no_grad():
        if missing:
            ids = torch.from_numpy(pl.loaded.tokenizer(missing)); e = dict(zip(missing, pl.model.encode_text(ids)))
        return F.normalize(torch.stack([e[t] if t in missing else pl.encode_texts([t])[0] for t in texts]), dim=-1).numpy()
def run(photos, classes, label, n_pairs=5):
    cl = [class_caption_name(c) for c in classes]
    class_embs = dm.class_embeddings(cl, enc, CAPTION_TEMPLATES)
    paths = [p for c in classes for p in photos.get(c, [])]
    labels = np.array([classes.index(c) for c in classes for _ in photos.get(c, [])])
    with torch.no_grad(): imgs = F.normalize(pl.model.visual.head(pl.img(paths).float()), dim=-1).numpy()
    preds = np.argmax(imgs @ class_embs.T, 1)
    pairs = most_confused_pairs(confusion_matrix(preds, labels, len(classes)), n_pairs)
    for k in (1, 2, 3):
        hints = []
        for i, j, _ in pairs:
            a, b = classes[i], classes[j]
            claims = pl.writer._ranked(a, b)[:k]
            hints += [dm.Hint(a, b, pl.writer._phrase(c, 0).text) for c in claims]
        hinted = sorted({classes.index(h.a) for h in hints} | {classes.index(h.b) for h in hints})
        on = np.isin(labels, hinted)
        he = enc([h.text for h in hints])
        row = []
        for alpha in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4):
            for sym in (True, False):
                w = dm.comparative_prompting(classes, class_embs, hints, he, alpha=alpha, symmetric=sym)
                p2 = np.argmax(imgs @ w.T, 1)
                row.append(f"a{alpha}{'s' if sym else 'o'}:{(np.mean(p2[on] == labels[on]) - np.mean(preds[on] == labels[on])) * 100:+.1f}")
        print(label, f"k={k} n={on.sum()} base={np.mean(preds[on] == labels[on]):.3f}", " ".join(row), flush=True)
for n in (5, 10, 20):
    run(pl.val_imgs, sorted(pl.train_imgs), f"val{n}", n)
run(pl.test_photos, pl.cub.classes, "test")
