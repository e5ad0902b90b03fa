"""The held-out ImageNet prompt set, chosen on validation: ConSE (T=3, top-10) with the untrained
text tower on 100 seen ImageNet classes treated as unseen (the other 700 as concepts, concepts at
the name prompts), 100-way top-1 for names, +parent, +gloss and their sums. Usage: everyday_prompts.py"""
import sys, torch, numpy as np, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from models.loading import load_model
from training.data import default_data_dir
from training.everyday import EVERYDAY_TEMPLATES, ImageNetClasses, load_imagenet_heldout
from training.features import ImageFeatureCache, default_cache_dir, image_cache_key

root = default_data_dir()
L = load_model("pcclip-mini:untrained"); m = L.model.eval()
cls = ImageNetClasses(root)
cache = ImageFeatureCache(default_cache_dir(), image_cache_key(m, L.preprocess_cfg, "trunk"))
Fx = cache.get([c.image for c in cls.classes], root=root, compute=m.visual.features, preprocess_cfg=L.preprocess_cfg)
held = set(load_imagenet_heldout()); seen = [i for i in range(1000) if i not in held]
rng = np.random.default_rng(0); val = sorted(rng.choice(seen, 100, replace=False).tolist())
tr = [i for i in seen if i not in set(val)]

@torch.no_grad()
def enc(texts):
    return torch.cat([F.normalize(m.encode_text(torch.as_tensor(L.tokenizer(texts[i:i + 256]))), dim=-1)
                      for i in range(0, len(texts), 256)])

idx = tr + val
E = {"name": F.normalize(enc([t.format(cls[i].label) for i in idx for t in EVERYDAY_TEMPLATES])
                         .reshape(len(idx), len(EVERYDAY_TEMPLATES), -1).mean(1), dim=-1),
     "parent": enc([f"a photo of a {cls[i].label}, a kind of {cls[i].parent}." for i in idx]),
     "gloss": enc([f"a photo of a {cls[i].label}, {cls[i].gloss}." for i in idx])}
with torch.no_grad():
    logits = m.visual.concepts.classifier(Fx)[val][:, tr] / 3
kth = logits.topk(10, 1).values[:, -1:]
p = logits.masked_fill(logits < kth, float("-inf")).softmax(1)
concept = F.normalize(p @ E["name"][:len(tr)], dim=-1)  # concepts at the name prompts
for combo in (("name",), ("parent",), ("gloss",), ("name", "parent"), ("name", "gloss"), ("name", "parent", "gloss")):
    T = F.normalize(sum(E[k] for k in combo), dim=-1)
    acc = ((concept @ T[len(tr):].t()).argmax(1) == torch.arange(len(val))).float().mean().item()
    print("+".join(combo), f"{acc:.2f}", flush=True)
