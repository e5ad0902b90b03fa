"""Ridge-regression ceiling: image features -> class attribute table, pair order accuracy (trunk, or --embeddings)."""
import os, sys, random, numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
EXP = os.environ.get("PCCLIP_EXP_DIR", "runs/experiments"); os.makedirs(EXP, exist_ok=True)
from training.default_model import Pipeline, ReproduceConfig
from training.data import size_score
from sklearn.linear_model import Ridge
cfg = ReproduceConfig(out=EXP + "/run", max_photos_per_class=12, write_outputs=False)
pl = Pipeline(cfg); pl.image_features()
EMBEDDINGS = "--embeddings" in sys.argv  # the base's normalised image embeddings instead of the trunk features
if EMBEDDINGS:
    import torch.nn.functional as F
    pl.model.load_state_dict(torch.load(EXP + '/base.pt')['state'])
    with torch.no_grad(): pl.trunk = F.normalize(pl.model.visual.head(pl.trunk.float()), dim=-1)
cols = sorted(pl.table.row(pl.cub.classes[0]).keys())
def target(c):
    r = pl.table.row(c); return np.array([r[x] if r[x] == r[x] else 0 for x in cols] + [100 * size_score(pl.table, c)])
X, Y = [], []
for c, ps in pl.train_imgs.items():
    for p in ps: X.append(pl.trunk[pl.pindex[p]].float().numpy()); Y.append(target(c))
X, Y = np.array(X), np.array(Y)
ci = {x: i for i, x in enumerate(cols)}; ci["size"] = len(cols)
reserved = sorted(pl.reserved)
def pairs(classes, photos, n, seed):
    rng = random.Random(seed); out = []
    while len(out) < n:
        a, b = rng.sample(classes, 2)
        ds = pl.writer.describe(a, b, rng=rng)
        if ds: out.append((rng.choice(photos[a]), rng.choice(photos[b]), rng.choice(ds)))
    return out
for alpha in ((0.01, 0.1, 1, 10) if EMBEDDINGS else (1, 10, 100, 1000)):
    m = Ridge(alpha=alpha).fit(X, Y)
    for name, classes, photos in (("val-seen", sorted(pl.val_imgs), pl.val_imgs), ("reserved", reserved, pl.test_photos)):
        ok = []
        for ia, ib, d in pairs(classes, photos, 2000, 0):
            pa, pb = m.predict(pl.trunk[[pl.pindex[ia], pl.pindex[ib]]].float().numpy())
            diff = pa - pb
            if d.kind == "size": s = diff[ci["size"]] * d.direction
            elif d.other_attribute: s = diff[ci[d.attributes[0]]] - diff[ci[d.other_attribute]]
            elif d.kind == "bill length": s = (diff[ci[d.attributes[2]]] - diff[ci[d.attributes[0]]]) * d.direction
            else: s = diff[ci[d.attributes[0]]] * d.direction
            ok.append(s > 0)
        print(alpha, name, np.mean(ok))
