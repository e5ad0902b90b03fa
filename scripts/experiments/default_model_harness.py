"""Experiment harness: one base, several PC-CLIP variants, quick metrics (not part of the repo)."""
import json, sys, time, random, os
import torch, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
EXP = os.environ.get("PCCLIP_EXP_DIR", "runs/experiments"); os.makedirs(EXP, exist_ok=True)
from training import default_model as dmod
from training.default_model import Pipeline, ReproduceConfig, TextTable, make_pairs
from training.evaluate import RANK_ATTRIBUTES, attribute_values, attribute_spearman

variants = json.loads(sys.argv[1])
tag = sys.argv[2]
cfg = ReproduceConfig(out=EXP + "/run", max_photos_per_class=12, write_outputs=False,
                      **(json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}))
pl = Pipeline(cfg)
pl.image_features()
pl.texts()
base_pairs = pl.pairs
pkey = lambda v: (v.get("short_fraction", cfg.short_fraction), v.get("pair_top_k", cfg.pair_top_k), v.get("n_pairs", cfg.n_pairs))
pair_sets = {pkey({}): base_pairs}
extra = []
for k in sorted({pkey(v) for v in variants} - set(pair_sets), key=str):
    pair_sets[k] = make_pairs(pl.train_imgs, pl.writer, k[2], random.Random(cfg.seed + 100), top_k=k[1], short_fraction=k[0])
    extra += [p["text"] for p in pair_sets[k]]
missing = sorted(set(extra) - set(pl.text.index))
if missing:
    t2 = TextTable(pl.loaded, pl.tail, missing)
    L = max(pl.text.states.shape[1], t2.states.shape[1])
    pad = lambda x, L: F.pad(x, (0, 0, 0, L - x.shape[1])) if x.dim() == 3 else F.pad(x, (0, L - x.shape[1]))
    pl.text.states = torch.cat([pad(pl.text.states, L), pad(t2.states, L)])
    pl.text.mask = torch.cat([pad(pl.text.mask, L), pad(t2.mask, L)])
    pl.text.pooled = torch.cat([pl.text.pooled, t2.pooled])
    n0 = len(pl.text.texts)
    for i, t in enumerate(t2.texts):
        pl.text.index[t] = n0 + i
    pl.text.texts += t2.texts
bp = EXP + "/base.pt"
if os.path.exists(bp):
    d = torch.load(bp)
    pl.base_state, pl.base_keys = d["state"], d["keys"]
    pl.model.load_state_dict(pl.base_state)
else:
    pl.train_base()
    torch.save({"state": pl.base_state, "keys": pl.base_keys}, bp)
reserved = sorted(pl.reserved)
rphotos = [(c, p) for c in reserved for p in pl.test_photos[c]]

@torch.no_grad()
def ranks():
    imgs = F.normalize(pl.model.visual.head(pl.img([p for _, p in rphotos]).float()), dim=-1).numpy()
    temb = F.normalize(pl.encode_texts([t for _, t, _ in RANK_ATTRIBUTES]), dim=-1).numpy()
    out = {}
    for (g, t, col), te in zip(RANK_ATTRIBUTES, temb):
        vals = attribute_values(type("S", (), {"table": pl.table})(), col, [c for c, _ in rphotos])
        out[t] = round(attribute_spearman(imgs, te, vals), 3)
    return out

results = []
for v in variants:
    t0 = time.time()
    pl.model.load_state_dict(pl.base_state)
    for k, val in v.items():
        setattr(cfg, k, val)
    pl.pairs = pair_sets[pkey(v)]
    from training.text_cache import LastLayersText
    if pl.tail.n_layers != cfg.text_layers:
        raise SystemExit("text_layers must stay fixed within one harness run")
    pl.train_pcclip()
    sw = pl.sweep()
    rows = []
    for r in sw["rows"]:
        pl.set_alpha(r["alpha"])
        r["rank"] = ranks()
        rows.append({k: (round(x, 3) if isinstance(x, float) else x) for k, x in r.items()})
    torch.save({"pc_state": pl.pc_state, "pc_keys": pl.pc_keys, "alpha": sw["chosen_alpha"]}, f"{EXP}/{tag}_{len(results)}.pt")
    res = {"variant": v, "rows": rows, "chosen": sw["chosen_alpha"], "sec": round(time.time() - t0)}
    results.append(res)
    print("RESULT", json.dumps(res), flush=True)
    with open(f"{EXP}/{tag}.jsonl", "a") as f:
        f.write(json.dumps(res) + "\n")
    # restore cfg defaults
    for k in v:
        setattr(cfg, k, getattr(ReproduceConfig(), k))
