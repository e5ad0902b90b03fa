"""Reproduce the default model `pcclip-mini` from the real data: base, PC-CLIP, evaluation, weights.

`pcclip reproduce` (or `bash scripts/reproduce_default_model.sh`) runs, on CPU:
1. frozen EfficientNet-Lite0 trunk features of every CUB and COCO photo (on-disk cache) and MiniLM
   states of every text (in memory; the first 6 - N layers are frozen);
2. the base: CLIP loss on CUB training photos of the non-reserved classes (one photo per class in
   a batch, captions from the class name and its attributes) and COCO photos with their captions;
   the image head (MLP), text head and logit scale train;
3. PC-CLIP: the PC-CLIP loss on attribute difference texts of non-reserved training photos (some
   phrasings held out), the CLIP loss and the attribute-direction loss (`AttributeProbe`, our
   addition) mixed in, the last N text layers and the text head train; WiSE-FT interpolation with
   the base, alpha chosen on validation photos (held-out training photos of seen classes) as the
   largest whose zero-shot stays within `max_zero_shot_drop`; the same stage with the paper's loss
   alone is trained first, for the report (`ablation`);
4. `pcclip eval` of both, the trade-off curve, calibration of compare probabilities, the
   weights with the evaluation summary in their metadata, and the README results table.
Reserved classes (`training/splits/cub100_reserved.txt`) are never seen by either training.
Both stages train through `pcclip train`'s optimisation loop (`training.trainer.OptimisationLoop`,
settings in `base_loop` and `pcclip_loop`); their losses are computed here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training import losses
from training.attribute_probe import AttributeProbe, fact_key
from training.everyday import EVERYDAY_TEMPLATES

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
COLOUR_PARTS = ("crown", "wing", "breast", "back", "belly", "throat", "bill", "upperparts", "underparts", "nape")
PATTERN_PARTS = ("breast", "wing", "head", "back", "tail")


@dataclass
class ReproduceConfig:
    out: str = "runs/reproduce"
    data: str = ""
    weights_dir: str = str(REPO / "models" / "weights")
    docs_dir: str = str(REPO / "docs" / "results")
    readme: str = str(REPO / "README.md")
    seed: int = 0
    val_fraction: float = 0.15
    # base
    base_steps: int = 1500
    base_lr: float = 1e-3
    base_batch: int = 64
    coco_batch: int = 32
    coco_weight: float = 0.5
    imagenet_batch: int = 64  # seen ImageNet classes per CLIP-loss batch (their sample photo + a caption)
    imagenet_weight: float = 1.0
    distill_batch: int = 64  # photos per distillation batch
    distill_weight: float = 1.0  # KL from the tower's ImageNet classifier to zero-shot over the seen classes' names
    distill_classes: int = 200  # seen classes per distillation step
    concept_scale: float = 3.0  # initial norm of the concept embeddings (the MLP head's output starts near 1.3)
    # PC-CLIP
    text_layers: int = 1
    n_pairs: int = 30000
    pc_steps: int = 500
    pc_lr: float = 1e-3
    pc_weight_decay: float = 0.01
    pc_scale: float = 20.0  # 1 / temperature of the difference loss
    pc_batch: int = 128
    clip_weight: float = 1.0
    pair_top_k: int | None = None  # the strongest claims of a class pair that training texts state (None: all)
    short_fraction: float = 0.3  # share of training pairs phrased as a short comparative ("a larger bird")
    probe_weight: float = 10.0  # weight of the attribute-direction loss (see `AttributeProbe`; 0: the paper's loss alone)
    probe_ridge: float = 1.0  # ridge penalty of the attribute probe
    awa2_probe: bool = True  # the attribute-direction loss also on AwA2 pairs (a probe fitted on the seen animals' photos)
    anchor_weight: float = 1.0  # PC-CLIP: keep everyday texts (class prompts, captions) at their base embeddings (0: off)
    anchor_batch: int = 128
    awa2_pairs: int = 6000  # AwA2 attribute-difference pairs of photos of the seen animals
    coco_pairs: int = 3000  # caption-difference pairs of COCO train2017 photos
    ablation: bool = True  # also train with the paper's loss alone (probe_weight 0) and report it
    alphas: tuple = (0.0, 0.25, 0.5, 0.75, 1.0)
    max_zero_shot_drop: float = 0.01
    # evaluation
    seeds: int = 5
    pairs_per_seed: int = 500
    max_photos_per_class: int | None = None
    max_classes: int | None = None
    install: bool = False  # also replace the shipped weights (models/weights), docs/results and the README table


# -- captions ---------------------------------------------------------------------------------------

def size_word(score: float) -> str:
    if not score == score:
        return "medium-sized"
    return ("very small", "small", "medium-sized", "large", "very large")[min(4, max(0, int(round(score)) - 1))]


def class_phrases(table, class_name: str, min_pct: float = 30.0) -> list[str]:
    """Attribute phrases of a class from its table row: "a red crown", "a striped breast", ..."""
    row = table.row(class_name)
    phrases = []
    for part in COLOUR_PARTS:
        cols = {a: v for a, v in row.items() if a.startswith(f"has_{part}_color::")}
        if cols:
            best = max(cols, key=cols.get)
            if cols[best] >= min_pct:
                noun = {"wing": "wings", "upperparts": "upperparts", "underparts": "underparts"}.get(part, part)
                phrases.append(f"{'' if noun.endswith('s') else 'a '}{best.split('::')[1]} {noun}".strip())
    for part in PATTERN_PARTS:
        cols = {a: v for a, v in row.items() if a.startswith(f"has_{part}_pattern::")}
        if cols:
            best = max(cols, key=cols.get)
            if cols[best] >= min_pct + 10 and best.split("::")[1] != "solid":
                phrases.append(f"a {best.split('::')[1]} {part}")
    return phrases


def class_captions(table, class_name: str, rng: random.Random, n: int = 8) -> list[str]:
    """Captions of one class: the zero-shot prompts plus name + size + attribute phrases."""
    from training.data import size_score
    from training.records import CAPTION_TEMPLATES, class_caption_name

    name = class_caption_name(class_name)
    size = size_word(size_score(table, class_name))
    phrases = class_phrases(table, class_name)
    out = [t.format(name) for t in CAPTION_TEMPLATES]
    primary = {a: v for a, v in table.row(class_name).items() if a.startswith("has_primary_color::")}
    colour = max(primary, key=primary.get).split("::")[1] if primary else ""
    while len(out) < n and phrases:
        k = min(len(phrases), rng.randint(1, 3))
        ps = rng.sample(phrases, k)
        attrs = ps[0] if k == 1 else ", ".join(ps[:-1]) + " and " + ps[-1]
        form = rng.randrange(3)
        if form == 0:
            out.append(f"a photo of a {name}, a {size} bird with {attrs}.")
        elif form == 1:
            out.append(f"a {name}: a {size}, mostly {colour} bird with {attrs}.")
        else:
            out.append(f"a photo of a {name} with {attrs}.")
    return out


# COCO category -> AwA2 animal (COCO train2017 photos of one such animal join the AwA2 pairs)
COCO_ANIMALS = {"elephant": "elephant", "zebra": "zebra", "giraffe": "giraffe", "horse": "horse", "sheep": "sheep",
                "cow": "cow", "bear": "", "cat": "", "dog": "", "bird": ""}


def imagenet_captions(c) -> list[str]:
    """Training captions of one ImageNet class: templates with its name and lemmas, its parent
    concept, and its WordNet gloss."""
    names = [c.label] + [x for x in c.lemmas if x.lower() != c.label.lower()][:2]
    out = [t.format(n) for n in names for t in EVERYDAY_TEMPLATES[:4]]
    out.append(f"a photo of a {c.label}, a kind of {c.parent}.")
    out.append(gloss_caption(c))
    return out


def gloss_caption(c) -> str:
    """An ImageNet class's name with its WordNet definition: "a tench: freshwater dace-like game fish ..."."""
    return f"a {c.label}: {c.gloss}."


def coco_difference_pairs(coco: list, n: int, rng: random.Random) -> list[dict]:
    """n pairs of two different COCO photos with a caption-difference text (`training.pairs.captions`)."""
    from training.pairs.captions import CAPTION_TEMPLATES as DIFF_TEMPLATES, caption_difference

    out = []
    for _ in range(n):
        a, b = rng.sample(coco, 2)
        text = caption_difference(rng.choice(a.captions), rng.choice(b.captions), rng.randrange(len(DIFF_TEMPLATES)))
        out.append({"image_a": a.path, "image_b": b.path, "text": text, "group": "caption", "source": "coco"})
    return out


# -- pairs with held-out phrasings --------------------------------------------------------------------

def split_phrasings(writer, class_a: str, class_b: str) -> tuple[list, list]:
    """(trained, held-out) phrasings of every difference of a class pair: the last template of each
    claim is held out of training."""
    phr = writer.all_phrasings(class_a, class_b)
    trained, held = [], []
    for i, d in enumerate(phr):
        last = i + 1 == len(phr) or phr[i + 1].template == 0
        (held if last else trained).append(d)
    return trained, held


COMPARATIVE_COLOURS = {"red": "redder", "yellow": "yellower", "black": "blacker", "blue": "bluer", "white": "whiter",
                       "brown": "browner", "grey": "greyer", "green": "greener", "pink": "pinker"}


def comparative_colour(colour: str) -> str:
    return COMPARATIVE_COLOURS.get(colour, f"more {colour}")


def short_comparative(d, noun: str = "bird") -> str | None:
    """The difference as a short comparative phrase about the first item ("a larger bird", "a bird
    with a redder crown"), the form a user ranks by; None for kinds without one (shapes)."""
    if d.kind == "size":
        return f"a {'larger' if d.direction > 0 else 'smaller'} {noun}"
    if d.kind == "bill length":
        return f"a {noun} with a {'longer' if d.direction > 0 else 'shorter'} bill"
    if d.kind == "primary colour":
        return f"a {comparative_colour(d.attributes[0].split('::')[1])} {noun}"
    if d.group == "colour" and d.kind.endswith(" colour"):
        part = d.kind[: -len(" colour")]
        colour = comparative_colour(d.attributes[0].split("::")[1])
        plural = part.endswith("s")
        return f"a {noun} with {'' if plural else 'a '}{colour} {part}"
    if d.group == "pattern" and d.kind.endswith(" pattern") and d.kind != "head pattern":
        part = d.kind[: -len(" pattern")]
        word = d.attributes[0].split("::")[1]
        plural = part.endswith("s")
        return f"a {noun} with {'' if plural else 'a '}{'more' if d.direction > 0 else 'less'} {word} {part}"
    return None


def make_pairs(images_by_class: dict, writer, n: int, rng: random.Random, top_k: int | None = 4,
               short_fraction: float = 0.0) -> list[dict]:
    """n pairs of photos of two different classes, each with one trained-phrasing difference text
    (one of the `top_k` strongest claims); a `short_fraction` of them phrased as a short comparative."""
    classes = sorted(images_by_class)
    cache: dict = {}
    out = []
    while len(out) < n:
        a, b = rng.sample(classes, 2)
        if (a, b) not in cache:
            trained, _ = split_phrasings(writer, a, b)
            strongest = {(d.kind, d.attributes) for d in writer.describe(a, b, n=top_k, rng=random.Random(0))}
            cache[(a, b)] = [d for d in trained if (d.kind, d.attributes) in strongest]
        diffs = cache[(a, b)]
        if not diffs:
            continue
        d = rng.choice(diffs)
        text = d.text
        if short_fraction > 0 and rng.random() < short_fraction:
            text = short_comparative(d, writer.noun) or text
        out.append({"image_a": rng.choice(images_by_class[a]), "image_b": rng.choice(images_by_class[b]),
                    "text": text, "group": d.group, "class_a": a, "class_b": b, "fact": fact_key(d)})
    return out


def eval_phrasing_pairs(photos_by_class: dict, writer, n: int, seed: int) -> dict[str, list[dict]]:
    """The same photo pairs and facts, phrased with a trained template and with the held-out one."""
    rng = random.Random(seed)
    classes = sorted(photos_by_class)
    out = {"trained": [], "held_out": []}
    while len(out["trained"]) < n:
        a, b = rng.sample(classes, 2)
        trained, held = split_phrasings(writer, a, b)
        if not held:
            continue
        h = rng.choice(held)
        same = [d for d in trained if d.kind == h.kind and d.attributes == h.attributes]
        if not same:
            continue
        t = rng.choice(same)
        ia, ib = rng.choice(photos_by_class[a]), rng.choice(photos_by_class[b])
        out["trained"].append({"image_a": ia, "image_b": ib, "text": t.text, "group": t.group})
        out["held_out"].append({"image_a": ia, "image_b": ib, "text": h.text, "group": h.group})
    return out


# -- the stages' optimisation (one loop: training.trainer.OptimisationLoop, as `pcclip train`) ---------

def base_loop(params: list, cfg: ReproduceConfig):
    """The base stage's optimisation: AdamW (lr `base_lr`, weight decay 0.1 on every parameter), 50
    warmup steps times a cosine over `base_steps`, no gradient clipping."""
    from training.trainer import OptimisationLoop, warmup_scaled_cosine

    return OptimisationLoop(params, lr=cfg.base_lr, weight_decay=0.1, total_steps=cfg.base_steps,
                            schedule=lambda s: warmup_scaled_cosine(s, 50, cfg.base_steps))


def pcclip_loop(params: list, cfg: ReproduceConfig):
    """The PC-CLIP stage's optimisation: AdamW (lr `pc_lr`, weight decay `pc_weight_decay`), 20 warmup
    steps times a cosine over `pc_steps`, gradient norm clipped at 1."""
    from training.trainer import OptimisationLoop, warmup_scaled_cosine

    return OptimisationLoop(params, lr=cfg.pc_lr, weight_decay=cfg.pc_weight_decay, total_steps=cfg.pc_steps,
                            grad_clip=1.0, schedule=lambda s: warmup_scaled_cosine(s, 20, cfg.pc_steps))


# -- the pipeline ----------------------------------------------------------------------------------

class TextTable:
    """Every text of the run, with cached MiniLM states (see training.text_cache)."""

    def __init__(self, loaded, tail, texts: list[str]):
        self.texts = sorted(set(texts))
        self.index = {t: i for i, t in enumerate(self.texts)}
        ids = torch.from_numpy(loaded.tokenizer(self.texts))
        self.states, self.mask, self.pooled = tail.cache_inputs(ids)

    def idx(self, texts) -> torch.Tensor:
        return torch.tensor([self.index[t] for t in texts], dtype=torch.long)


class Pipeline:
    def __init__(self, cfg: ReproduceConfig):
        from models.loading import load_model
        from training.data import AttributeTable, CubDataset, default_data_dir, load_class_split, load_coco_captions
        from training.pairs.attributes import AttributeWriter

        self.cfg = cfg
        self.t0 = time.time()
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        self.root = Path(cfg.data) if cfg.data else default_data_dir()
        self.loaded = load_model("pcclip-mini:untrained")
        self.model = self.loaded.model.eval()
        for p in self.model.parameters():
            p.requires_grad = False
        self.reserved = set(load_class_split())
        self.cub = CubDataset(self.root)
        self.table = AttributeTable.from_cub(self.root)
        self.writer = AttributeWriter(self.table, noun="bird", seed=cfg.seed)
        seen = [c for c in self.cub.classes if c not in self.reserved]
        if cfg.max_classes:
            seen = seen[: cfg.max_classes]
        self.train_imgs, self.val_imgs = {}, {}
        for c in seen:
            ims = [im.path for im in self.cub.images_of(c, "train")]
            val = [p for p in ims if int(hashlib.sha256(p.encode()).hexdigest(), 16) % 1000 < cfg.val_fraction * 1000]
            self.val_imgs[c] = val or ims[:1]
            self.train_imgs[c] = [p for p in ims if p not in set(self.val_imgs[c])] or ims
        self.coco = load_coco_captions(self.root, "train")  # val2017 is evaluation only
        self.everyday_init()
        k = cfg.max_photos_per_class
        self.test_photos = {c: [im.path for im in self.cub.images_of(c, "test")][:k] for c in self.cub.classes}

    def everyday_init(self) -> None:
        """ImageNet classes (seen / held out), the concept head's classes, AwA2 animals and their photos."""
        from training.data import AttributeTable
        from training.everyday import (ImageNetClasses, coco_category_photos, load_awa2_heldout, load_awa2_imagenet,
                                       load_imagenet_heldout)
        from training.evaluate_everyday import build_everyday_setup
        from training.pairs.attributes import AttributeWriter

        self.imagenet = ImageNetClasses(self.root)
        held = set(load_imagenet_heldout())
        self.seen_imagenet = [i for i in range(len(self.imagenet)) if i not in held]
        concepts = self.model.visual.concepts
        if concepts is None or len(concepts.index) != len(self.seen_imagenet):
            raise ValueError(f"the model config's concept head must have {len(self.seen_imagenet)} classes")
        concepts.index.copy_(torch.tensor(self.seen_imagenet))
        self.awa2 = AttributeTable.from_awa2(self.root)
        self.awa2_writer = AttributeWriter(self.awa2, noun="animal", seed=self.cfg.seed)
        awa2_held = set(load_awa2_heldout())
        self.animal_imgs = {a: [self.imagenet[i].image for i in idx]
                            for a, idx in load_awa2_imagenet().items() if a not in awa2_held}
        # COCO train2017 photos also get a caption per annotated category ("a photo of a dog.")
        coco_categories = coco_category_photos(self.root, "train")
        self.coco_category_captions = {path: [EVERYDAY_TEMPLATES[0].format(c) for c in cats] for path, cats in coco_categories}
        for path, cats in coco_categories:  # COCO photos of exactly one animal, an AwA2 one
            animals = [c for c in cats if c in COCO_ANIMALS]
            if len(animals) == 1 and COCO_ANIMALS[animals[0]] in self.awa2.classes and COCO_ANIMALS[animals[0]] not in awa2_held:
                self.animal_imgs.setdefault(COCO_ANIMALS[animals[0]], []).append(path)
        self.everyday = build_everyday_setup(self.root)

    def log(self, msg: str) -> None:
        tqdm.write(f"[{time.time() - self.t0:6.0f}s] {msg}")

    # features -----------------------------------------------------------------------------------
    def image_features(self) -> None:
        from training.features import ImageFeatureCache, default_cache_dir, image_cache_key

        # every photo but the reserved classes' training photos (no step reads those)
        test = {p for ps in self.test_photos.values() for p in ps}
        paths = sorted({im.path for im in self.cub.images if im.is_train and im.class_name not in self.reserved}
                       | test | {c.path for c in self.coco} | {c.image for c in self.imagenet.classes}
                       | set(self.everyday.paths()) | {p for v in self.animal_imgs.values() for p in v})
        key = image_cache_key(self.model, self.loaded.preprocess_cfg, "trunk")
        cache = ImageFeatureCache(default_cache_dir(), key)
        self.feature_cache = "warm" if cache.cached(paths) else "cold"
        feats = cache.get(paths, root=self.root, compute=self.model.visual.features,
                                                               preprocess_cfg=self.loaded.preprocess_cfg)
        self.paths = paths
        self.pindex = {p: i for i, p in enumerate(paths)}
        self.trunk = feats
        self.log(f"trunk features of {len(paths)} photos")

    def texts(self) -> None:
        from training.evaluate import RANK_ATTRIBUTES
        from training.records import CAPTION_TEMPLATES, class_caption_name
        from training.text_cache import LastLayersText

        cfg = self.cfg
        rng = random.Random(cfg.seed)
        self.captions = {c: class_captions(self.table, c, rng) for c in self.train_imgs}
        self.pairs = make_pairs(self.train_imgs, self.writer, cfg.n_pairs, rng, top_k=cfg.pair_top_k,
                                short_fraction=cfg.short_fraction)
        for p in self.pairs:
            p["source"] = "cub"
        self.pairs += [dict(p, source="awa2") for p in make_pairs(self.animal_imgs, self.awa2_writer, cfg.awa2_pairs, rng,
                                                                   top_k=None, short_fraction=cfg.short_fraction)]
        self.pairs += coco_difference_pairs(self.coco, cfg.coco_pairs, rng)
        self.imagenet_captions = {i: imagenet_captions(self.imagenet[i]) for i in self.seen_imagenet}
        self.imagenet_prompts = {i: [t.format(self.imagenet[i].label) for t in EVERYDAY_TEMPLATES] for i in self.seen_imagenet}
        self.distill_photos = ([self.imagenet[i].image for i in self.seen_imagenet]
                               + [p for v in self.train_imgs.values() for p in v] + [c.path for c in self.coco])
        self.val_pairs = make_pairs(self.val_imgs, self.writer, 1000, random.Random(cfg.seed + 7))
        prompts = [t.format(class_caption_name(c)) for c in self.cub.classes for t in CAPTION_TEMPLATES]
        reserved_test = {c: v for c, v in self.test_photos.items() if c in self.reserved}
        self.phrasing_pairs = eval_phrasing_pairs(reserved_test, self.writer, 1000, seed=cfg.seed + 11)
        from training.evaluate import build_setup, sample_difference_pairs
        from training.data import RESERVED_SPLIT

        self.setup = build_setup(self.root, RESERVED_SPLIT, cfg.max_photos_per_class)
        self.test_pairs = [p for s in range(2) for p in sample_difference_pairs(self.setup, 500, s)]
        all_texts = ([t for v in self.captions.values() for t in v] + [p["text"] for p in self.pairs]
                     + [p["text"] for p in self.val_pairs] + prompts + [c for im in self.coco for c in im.captions]
                     + [p["text"] for v in self.phrasing_pairs.values() for p in v] + [p["text"] for p in self.test_pairs]
                     + [t for _, t, _ in RANK_ATTRIBUTES]
                     + [t for v in self.imagenet_captions.values() for t in v] + [t for v in self.imagenet_prompts.values() for t in v]
                     + [t.format(n) for n in self.everyday.imagenet_labels + self.everyday.coco_names for t in EVERYDAY_TEMPLATES]
                     + [gloss_caption(c) for c in self.imagenet.classes]
                     + [t for v in self.coco_category_captions.values() for t in v])
        self.tail = LastLayersText(self.model, cfg.text_layers)
        self.text = TextTable(self.loaded, self.tail, all_texts)
        self.log(f"{len(self.text.texts)} texts, {len(self.pairs)} training pairs")

    # embedding helpers ---------------------------------------------------------------------------
    def img(self, paths) -> torch.Tensor:
        return self.trunk[torch.tensor([self.pindex[p] for p in paths])]

    def encode_texts(self, texts, grad: bool = False, batch: int = 512) -> torch.Tensor:
        idx = self.text.idx(texts)
        out = []
        with torch.set_grad_enabled(grad):
            for i in range(0, len(idx), batch):
                j = idx[i:i + batch]
                out.append(self.tail(self.text.states[j], self.text.mask[j]))
        return torch.cat(out)

    @torch.no_grad()
    def metrics(self, classes_photos: dict, pairs: list[dict], classes: list[str] | None = None) -> dict:
        """Zero-shot top-1 over `classes` (photos of classes_photos) and difference accuracy on pairs."""
        from training.records import CAPTION_TEMPLATES, class_caption_name

        classes = classes or self.cub.classes
        prompts = [t.format(class_caption_name(c)) for c in classes for t in CAPTION_TEMPLATES]
        temb = F.normalize(self.encode_texts(prompts), dim=-1).reshape(len(classes), len(CAPTION_TEMPLATES), -1).mean(1)
        temb = F.normalize(temb, dim=-1)
        paths = [p for c in classes_photos for p in classes_photos[c]]
        labels = torch.tensor([classes.index(c) for c in classes_photos for _ in classes_photos[c]])
        emb = F.normalize(self.model.visual.embed(self.img(paths)), dim=-1)
        zs = float(((emb @ temb.t()).argmax(1) == labels).float().mean())
        return {"zero_shot": zs, "difference": self.difference_accuracy(pairs)}

    @torch.no_grad()
    def difference_accuracy(self, pairs: list[dict]) -> float:
        a = self.model.visual.embed(self.img([p["image_a"] for p in pairs]))
        b = self.model.visual.embed(self.img([p["image_b"] for p in pairs]))
        t = F.normalize(self.encode_texts([p["text"] for p in pairs]), dim=-1)
        return float(((t * losses.pair_difference(a, b)).sum(-1) > 0).float().mean())

    # base ----------------------------------------------------------------------------------------
    def train_texts(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings with gradients: through the trainable last layers in the PC-CLIP stage,
        else (base: only the head trains) the head on the frozen tower's pooled features."""
        if self.text_layers_train:
            return self.encode_texts(texts, grad=True)
        return self.model.text.head(self.text.pooled[self.text.idx(texts)])

    def class_text_embeddings(self, prompts: dict, classes: list[int], grad: bool = False,
                              rng: random.Random | None = None) -> torch.Tensor:
        """Text embeddings of ImageNet classes [C, D]: the template ensemble (mean of normalised
        prompts), or with `rng` one random prompt per class (with gradients when `grad`)."""
        if rng is not None:
            texts = [rng.choice(prompts[i]) for i in classes]
            return self.train_texts(texts) if grad else self.encode_texts(texts)
        n = len(prompts[classes[0]])
        emb = F.normalize(self.encode_texts([t for i in classes for t in prompts[i]]), dim=-1)
        return emb.reshape(len(classes), n, -1).mean(1)

    def everyday_losses(self, rng: random.Random, scale: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """CLIP loss on seen ImageNet photos with their class captions, plus the distillation of the
        tower's ImageNet classifier: KL(classifier over the seen classes || zero-shot over their names)
        on a batch of photos (ImageNet, CUB and COCO training photos). `emb`: fixed image embeddings
        (PC-CLIP stage), else the image tower's trainable heads run. The distillation takes
        `distill_classes` random seen classes a step (the classifier renormalised over them)."""
        cfg, m = self.cfg, self.model

        def image(paths):
            x = self.img(paths)
            return emb[torch.tensor([self.pindex[p] for p in paths])] if emb is not None else m.visual.embed(x)

        loss = torch.zeros(())
        if cfg.imagenet_weight > 0:
            cls = rng.sample(self.seen_imagenet, min(cfg.imagenet_batch, len(self.seen_imagenet)))
            caps = [rng.choice(self.imagenet_captions[i]) for i in cls]
            loss = loss + cfg.imagenet_weight * losses.clip_loss(
                image([self.imagenet[i].image for i in cls]), self.train_texts(caps), scale)
        if cfg.distill_weight > 0:
            photos = rng.sample(self.distill_photos, cfg.distill_batch)
            k = sorted(rng.sample(range(len(self.seen_imagenet)), min(cfg.distill_classes, len(self.seen_imagenet))))
            with torch.no_grad():
                # the classifier's own distribution (temperature 1, no top-k) over the sampled classes
                teacher = m.visual.concepts.classifier(self.img(photos))[:, [self.seen_imagenet[j] for j in k]].softmax(-1)
            classes = [self.seen_imagenet[j] for j in k]
            names = F.normalize(self.class_text_embeddings(self.imagenet_prompts, classes, grad=True, rng=rng), dim=-1)
            student = scale * F.normalize(image(photos), dim=-1) @ names.t()
            loss = loss + cfg.distill_weight * F.kl_div(student.log_softmax(-1), teacher, reduction="batchmean")
        return loss

    @torch.no_grad()
    def init_concepts(self) -> None:
        """Each seen class's concept embedding starts at the text embedding of its name (template
        ensemble, untrained text head): a photo then starts at what the classifier sees in it."""
        emb = self.class_text_embeddings(self.imagenet_prompts, self.seen_imagenet)
        self.model.visual.concepts.embeddings.copy_(self.cfg.concept_scale * F.normalize(emb, dim=-1))

    def train_base(self) -> None:
        cfg = self.cfg
        m = self.model
        self.init_concepts()
        self.text_layers_train = False
        params = (list(m.visual.head.parameters()) + [m.visual.concepts.embeddings] + list(m.text.head.parameters())
                  + [m.logit_scale])
        for p in params:
            p.requires_grad = True
        loop = base_loop(params, cfg)
        rng = random.Random(cfg.seed + 1)
        classes = sorted(self.train_imgs)
        coco_pairs = ([(im.path, c) for im in self.coco for c in im.captions]
                      + [(p, c) for p, caps in self.coco_category_captions.items() for c in caps])
        m.visual.head.train()

        def step_loss(step: int) -> torch.Tensor:
            """The base's loss of one step (its batches drawn from `rng`)."""
            batch = rng.sample(classes, min(cfg.base_batch, len(classes)))
            photos = [rng.choice(self.train_imgs[c]) for c in batch]
            caps = [rng.choice(self.captions[c]) for c in batch]
            scale = m.logit_scale.exp().clamp(max=100)
            loss = losses.clip_loss(m.visual.embed(self.img(photos)), self.train_texts(caps), scale)
            if cfg.coco_weight > 0:
                cb = rng.sample(coco_pairs, cfg.coco_batch)
                seen_img, cb2 = set(), []
                for p, c in cb:  # one caption per photo in a batch
                    if p not in seen_img:
                        seen_img.add(p)
                        cb2.append((p, c))
                loss = loss + cfg.coco_weight * losses.clip_loss(m.visual.embed(self.img([p for p, _ in cb2])),
                                                                 self.train_texts([c for _, c in cb2]), scale)
            loss = loss + self.everyday_losses(rng, scale)
            return loss

        loop.run(step_loss, desc="base (CLIP loss + distillation, heads)", disable=None, mininterval=10)
        m.visual.head.eval()
        for p in m.parameters():
            p.requires_grad = False
        with torch.no_grad():
            m.logit_scale.clamp_(max=math.log(100))
        self.base_state = {k: v.clone() for k, v in m.state_dict().items()}
        self.base_keys = sorted(n for n, _ in m.named_parameters()
                                if n.startswith(("visual.head", "visual.concepts.embeddings", "text.head")) or n == "logit_scale")
        self.base_keys.append("visual.concepts.index")
        self.log(f"base trained: {self.metrics(self.val_imgs, self.val_pairs, sorted(self.train_imgs))} (validation, seen classes)")

    # PC-CLIP ---------------------------------------------------------------------------------------
    def train_pcclip(self) -> None:
        cfg = self.cfg
        m = self.model
        params = self.tail.trainable_parameters()
        self.text_layers_train = True
        for p in params:
            p.requires_grad = True
        self.pc_keys = sorted(set(self.tail.trainable_names(m)))
        loop = pcclip_loop(params, cfg)
        rng = random.Random(cfg.seed + 2)
        classes = sorted(self.train_imgs)
        scale = m.logit_scale.detach().exp()
        with torch.no_grad():
            emb = m.visual.embed(self.trunk)
        if cfg.probe_weight > 0:
            photos = [(c, p) for c in classes for p in self.train_imgs[c]]
            x = F.normalize(emb[torch.tensor([self.pindex[p] for _, p in photos])], dim=-1).numpy()
            probe = AttributeProbe(self.table, x, [c for c, _ in photos], cfg.probe_ridge)
            facts = sorted({p["fact"] for p in self.pairs if p["source"] == "cub"}, key=repr)
            fact_index = {("cub", f): i for i, f in enumerate(facts)}
            dirs = [probe.directions(facts)]
            if cfg.awa2_probe:
                from training.attribute_probe import table_targets

                photos = [(a, p) for a, ps in sorted(self.animal_imgs.items()) for p in ps]
                x = F.normalize(emb[torch.tensor([self.pindex[p] for _, p in photos])], dim=-1).numpy()
                probe = AttributeProbe(self.awa2, x, [a for a, _ in photos], cfg.probe_ridge, targets=table_targets)
                afacts = sorted({p["fact"] for p in self.pairs if p["source"] == "awa2"}, key=repr)
                fact_index.update({("awa2", f): len(fact_index) + i for i, f in enumerate(afacts)})
                dirs.append(probe.directions(afacts))
            fact_dirs = torch.from_numpy(np.concatenate(dirs))
        probed = ("cub", "awa2") if cfg.awa2_probe else ("cub",)
        if cfg.anchor_weight > 0:
            anchors, anchor_base = self.anchors()
        for blk in list(m.text.blocks)[self.tail.first_trainable:]:
            blk.train()

        def step_loss(step: int) -> torch.Tensor:
            """The PC-CLIP stage's loss of one step (its batches drawn from `rng`)."""
            batch = rng.sample(self.pairs, cfg.pc_batch)
            ia = emb[torch.tensor([self.pindex[p["image_a"]] for p in batch])]
            ib = emb[torch.tensor([self.pindex[p["image_b"]] for p in batch])]
            texts = [p["text"] for p in batch]
            t = self.encode_texts(texts, grad=True)
            # identical texts in a batch need no special targets: their embeddings are identical, so
            # the loss is the same as with multi-positive targets
            loss = losses.pc_clip_loss(t, ia, ib, cfg.pc_scale)
            cub = [k for k, p in enumerate(batch) if p["source"] in probed]
            if cfg.probe_weight > 0 and cub:  # the probes know the attribute tables' facts
                target = fact_dirs[torch.tensor([fact_index[(batch[k]["source"], batch[k]["fact"])] for k in cub])]
                loss = loss + cfg.probe_weight * len(cub) / len(batch) * losses.attribute_direction_loss(t[cub], target)
            if cfg.anchor_weight > 0:
                j = rng.sample(range(len(anchors)), cfg.anchor_batch)
                now = F.normalize(self.encode_texts([anchors[i] for i in j], grad=True), dim=-1)
                loss = loss + cfg.anchor_weight * (1 - (now * anchor_base[j]).sum(-1)).mean()
            if cfg.clip_weight > 0:
                cb = rng.sample(classes, min(cfg.base_batch, len(classes)))
                photos = [rng.choice(self.train_imgs[c]) for c in cb]
                caps = [rng.choice(self.captions[c]) for c in cb]
                ie = emb[torch.tensor([self.pindex[p] for p in photos])]
                loss = loss + cfg.clip_weight * (losses.clip_loss(ie, self.train_texts(caps), scale)
                                                 + self.everyday_losses(rng, scale, emb))
            return loss

        loop.run(step_loss, desc=f"PC-CLIP (last {cfg.text_layers} text layers + head)", disable=None, mininterval=10)
        m.eval()
        for p in m.parameters():
            p.requires_grad = False
        self.pc_state = {k: m.state_dict()[k].clone() for k in self.pc_keys}

    def anchors(self) -> tuple[list[str], torch.Tensor]:
        """20,000 everyday texts and their normalised base embeddings, for the anchor term; computed
        once, at the first PC-CLIP stage (every stage starts from the base, so they are the same)."""
        if getattr(self, "_anchors", None) is None:
            pool = sorted({t for v in self.imagenet_captions.values() for t in v}
                          | {c for im in self.coco for c in im.captions} | {t for v in self.captions.values() for t in v})
            texts = random.Random(self.cfg.seed + 3).sample(pool, min(len(pool), 20000))
            with torch.no_grad():
                self._anchors = (texts, F.normalize(self.encode_texts(texts), dim=-1))
        return self._anchors

    def paper_loss_ablation(self) -> dict:
        """The same PC-CLIP stage with the paper's loss alone (no attribute-direction term), for the
        report; the model is back at the base afterwards."""
        weight = self.cfg.probe_weight
        self.cfg.probe_weight = 0.0
        try:
            self.train_pcclip()
            sweep = self.sweep()
        finally:
            self.cfg.probe_weight = weight
            self.model.load_state_dict(self.base_state)
        chosen = next(r for r in sweep["rows"] if r["alpha"] == sweep["chosen_alpha"])
        return {"probe_weight": 0.0, "chosen_alpha": sweep["chosen_alpha"], "chosen": chosen, "rows": sweep["rows"],
                "test_pairs": len(self.test_pairs),
                "note": f"in-pipeline figures: {len(self.test_pairs)} reserved-class test pairs, "
                        f"{len(self.phrasing_pairs['trained'])} phrasing pairs"}

    def set_alpha(self, alpha: float) -> None:
        state = {k: alpha * self.pc_state[k] + (1 - alpha) * self.base_state[k] for k in self.pc_keys}
        self.model.load_state_dict(state, strict=False)

    def sweep(self) -> dict:
        """WiSE-FT alphas: validation (seen classes, for the choice) and test (the curve) metrics."""
        rows = []
        for alpha in tqdm(self.cfg.alphas, desc="WiSE-FT sweep", unit="alpha", disable=None):
            self.set_alpha(alpha)
            val = self.metrics(self.val_imgs, self.val_pairs, sorted(self.train_imgs))
            test = self.metrics(self.test_photos, self.test_pairs)
            held = {k: self.difference_accuracy(v) for k, v in self.phrasing_pairs.items()}
            rows.append({"alpha": alpha, "val_zero_shot": val["zero_shot"], "val_difference": val["difference"],
                         "val_imagenet_zero_shot": self.imagenet_seen_zero_shot(),
                         "test_zero_shot": test["zero_shot"], "test_difference_reserved": test["difference"],
                         "phrasings_trained": held["trained"], "phrasings_held_out": held["held_out"]})
            self.log(f"alpha {alpha}: {rows[-1]}")
        base = rows[0]
        drop = self.cfg.max_zero_shot_drop
        ok = [r for r in rows if r["val_zero_shot"] >= base["val_zero_shot"] - drop
              and r["val_imagenet_zero_shot"] >= base["val_imagenet_zero_shot"] - drop] or rows[:1]
        best = max(ok, key=lambda r: (r["val_difference"], -r["alpha"]))
        self.set_alpha(best["alpha"])
        return {"rows": rows, "chosen_alpha": best["alpha"],
                "rule": f"largest validation difference accuracy with validation zero-shot (CUB) and seen-ImageNet "
                        f"zero-shot >= base - {drop}"}

    @torch.no_grad()
    def imagenet_seen_zero_shot(self) -> float:
        """Zero-shot top-1 of the seen ImageNet classes' sample photos among their 800 names (training
        photos: a check that PC-CLIP keeps the base's everyday knowledge, for the WiSE-FT choice)."""
        names = F.normalize(self.class_text_embeddings(self.imagenet_prompts, self.seen_imagenet), dim=-1)
        emb = F.normalize(self.model.visual.embed(self.img([self.imagenet[i].image for i in self.seen_imagenet])), dim=-1)
        return float(((emb @ names.t()).argmax(1) == torch.arange(len(names))).float().mean())

    @torch.no_grad()
    def calibration(self) -> dict:
        """Logistic fit of held-out pair labels on compare scores: sigmoid((s - bias) / temperature).
        Validation pairs (seen classes, held-out photos): the true order is positive, swapped negative."""
        from sklearn.linear_model import LogisticRegression

        pairs = self.val_pairs
        a = self.model.visual.embed(self.img([p["image_a"] for p in pairs]))
        b = self.model.visual.embed(self.img([p["image_b"] for p in pairs]))
        t = F.normalize(self.encode_texts([p["text"] for p in pairs]), dim=-1)
        pos = (t * losses.pair_difference(a, b)).sum(-1).numpy()
        neg = (t * losses.pair_difference(b, a)).sum(-1).numpy()
        x = np.concatenate([pos, neg])[:, None]
        y = np.concatenate([np.ones_like(pos), np.zeros_like(neg)])
        lr = LogisticRegression(C=100.0).fit(x, y)
        w, c = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        return {"temperature": 1.0 / w, "bias": -c / w, "source": f"logistic fit on {len(x)} validation pair scores (seen classes, held-out photos; swapped order = negative)"}

    # outputs ---------------------------------------------------------------------------------------
    def save(self, path: Path, keys: list[str], meta: dict, state: dict | None = None) -> Path:
        from safetensors.torch import save_file

        state = state if state is not None else self.model.state_dict()
        def stored(t: torch.Tensor) -> torch.Tensor:  # fp16 storage for weight matrices; indices stay integers
            if not t.is_floating_point():
                return t.detach().contiguous()
            return t.detach().to(torch.float16 if t.numel() > 1 else torch.float32).contiguous()

        tensors = {k: stored(state[k]) for k in keys}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
        return path


def plot_tradeoff(rows: list[dict], base_zero_shot: float, chosen: float, path: Path,
                  paper_loss_rows: list[dict] | None = None) -> Path:
    """Zero-shot vs difference accuracy along the WiSE-FT alphas (and, if given, the same curve of
    the run with the paper's loss alone)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    curves = [(rows, "o-", "WiSE-FT alpha (base -> PC-CLIP, shipped)", True)]
    if paper_loss_rows:
        curves.append((paper_loss_rows, "s--", "the same, PC-CLIP loss alone", False))
    for curve, style, label, annotate in curves:
        xs = [r["test_difference_reserved"] * 100 for r in curve]
        ys = [r["test_zero_shot"] * 100 for r in curve]
        ax.plot(xs, ys, style, label=label)
        for r, x, y in zip(curve, xs, ys):
            if annotate:
                ax.annotate(f"a={r['alpha']:g}" + (" (chosen)" if r["alpha"] == chosen else ""), (x, y), fontsize=7,
                            textcoords="offset points", xytext=(4, 4))
    ax.axhline(base_zero_shot * 100 - 1, color="grey", ls="--", lw=0.8, label="base zero-shot - 1 point")
    ax.set_xlabel("difference classification, reserved classes (%)")
    ax.set_ylabel("zero-shot top-1, CUB test 100-way (%)")
    ax.set_title("pcclip-mini: zero-shot vs difference accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def targets(report: dict, sweep: dict) -> list[dict]:
    """Each issue target: met or missed, with the figure."""
    d = report["difference_classification"]
    z = report["zero_shot"]
    r = report["rank_by_attribute"]
    base_d, pc_d = d["base"]["accuracy"]["mean"], d["pcclip"]["accuracy"]["mean"]
    base_z, pc_z = z["base"]["top1_all"], z["pcclip"]["top1_all"]
    size = next(v["spearman"] for v in r["pcclip"]["per_attribute"].values() if v["group"] == "size")
    colours_up = [t for t, v in r["pcclip"]["per_attribute"].items() if v["group"] == "colour"
                  and (v["spearman"] or -9) > (r["base"]["per_attribute"][t]["spearman"] or -9)]
    cp = z["pcclip"]["comparative_prompting"]
    cp_gain = cp["top1_hinted_with"] - cp["top1_hinted_without"] if cp["top1_hinted_with"] is not None else float("nan")
    ph = report["phrasings"]
    gap = ph["trained"] - ph["held_out"]
    e = report["everyday"]
    im, co = e["imagenet_heldout_top1_described"], e["coco_val_top1"]
    imn = e["imagenet_heldout_top1"]
    ad, asp = e["animal_difference"]["pcclip"]["accuracy"]["mean"], e["animal_size_spearman"]["pcclip"]
    zs_sets = {"CUB": (base_z, pc_z), "held-out ImageNet": (im["base"], im["pcclip"]),
               "held-out ImageNet (names only)": (imn["base"], imn["pcclip"]), "COCO val": (co["base"], co["pcclip"])}
    worst = min(zs_sets, key=lambda k: zs_sets[k][1] - zs_sets[k][0])
    weights_mb = report.get("weights_mb", float("nan"))
    out = [
        ("held-out ImageNet classes: zero-shot top-1 (200-way) >= 35%", im["pcclip"] >= 0.35,
         f"{im['pcclip']:.1%} (base {im['base']:.1%}) with WordNet-described prompts; names only "
         f"{imn['pcclip']:.1%} (base {imn['base']:.1%})"),
        ("COCO val2017: top-1 among the annotated categories (80 names) >= 85%", co["pcclip"] >= 0.85,
         f"{co['pcclip']:.1%} (base {co['base']:.1%})"),
        ("animals (held-out): difference accuracy on AwA2 texts >= 80%", (ad or 0) >= 0.80,
         f"{ad:.1%} (base {e['animal_difference']['base']['accuracy']['mean']:.1%})"),
        ("animals (held-out): Spearman of \"a larger animal\" with AwA2 big >= 0.6", (asp or -1) >= 0.6,
         f"{asp:.3f} (base {e['animal_size_spearman']['base']:.3f})" if asp is not None else "n/a"),
        ("PC-CLIP zero-shot no more than 1 point below base on every set", all(p >= b - 0.01 for b, p in zs_sets.values()),
         "; ".join(f"{k} {(p - b) * 100:+.1f}" for k, (b, p) in zs_sets.items()) + f" (worst: {worst})"),
        ("one command reproduces everything from nothing (cold caches) in <= 90 min",
         report.get("feature_cache") == "cold" and report.get("minutes", 99) <= 90,
         f"{report.get('minutes', float('nan')):.0f} min with the image-feature cache {report.get('feature_cache', 'n/a')}"
         + ("" if report.get("feature_cache") == "cold" else " (a cold run was not measured by this run)")),
        ("shipped weights <= 25 MB", weights_mb <= 25, f"{weights_mb:.1f} MB"),
        ("base zero-shot top-1 (CUB test, 100-way) >= 70%", base_z >= 0.70, f"{base_z:.1%}"),
        ("PC-CLIP difference accuracy (reserved) >= 85%", pc_d >= 0.85, f"{pc_d:.1%}"),
        ("PC-CLIP difference accuracy >= base + 25 points", pc_d - base_d >= 0.25, f"{(pc_d - base_d) * 100:+.1f} points (base {base_d:.1%})"),
        ("PC-CLIP zero-shot no more than 1 point below base", pc_z >= base_z - 0.01, f"{(pc_z - base_z) * 100:+.1f} points ({pc_z:.1%} vs {base_z:.1%})"),
        ("rank by attribute: Spearman on size >= 0.7", (size or 0) >= 0.7, f"{size:.3f}" if size is not None else "n/a"),
        ("rank by attribute: above base on >= 3 colour attributes", len(colours_up) >= 3, f"{len(colours_up)} of 5"),
        ("comparative prompting: >= +3 points on the confused pairs", cp_gain >= 0.03, f"{cp_gain * 100:+.1f} points"),
        ("held-out phrasings within 5 points of trained phrasings", abs(gap) <= 0.05, f"{ph['held_out']:.1%} vs {ph['trained']:.1%} ({-gap * 100:+.1f} points)"),
    ]
    return [{"target": t, "met": bool(m), "figure": f} for t, m, f in out]


def results_markdown(report: dict, sweep: dict, tgt: list[dict], minutes: float, plot_rel: str) -> str:
    s = report["summary"]["values"]
    z = report["zero_shot"]
    rows = [("difference classification, reserved classes", "difference acc"), ("rank by attribute, mean Spearman", "rank spearman"),
            ("zero-shot top-1, CUB test 100-way", "zero-shot all"), ("zero-shot top-1, reserved classes (20-way)", "zero-shot reserved"),
            ("confused pairs, without hints", "hinted w/o hints"), ("confused pairs, with comparative hints", "hinted with hints")]
    def fmt(v, spearman: bool) -> str:
        return "n/a" if v is None else (f"{v:.3f}" if spearman else f"{v * 100:.1f}%")

    lines = ["| task | base | PC-CLIP |", "| --- | --- | --- |"]
    for label, key in rows:
        sp = "Spearman" in label
        lines.append(f"| {label} | {fmt(s['base'][key], sp)} | {fmt(s['pcclip'][key], sp)} |")
    e = report["everyday"]
    for label, key, sp in (("zero-shot top-1, held-out ImageNet classes (200-way), names", "imagenet_heldout_top1", False),
                           ("zero-shot top-1, held-out ImageNet classes (200-way), described (WordNet parent + gloss)",
                            "imagenet_heldout_top1_described", False),
                           ("zero-shot top-1, COCO val2017 (80 names, any annotated category)", "coco_val_top1", False),
                           ("Spearman, \"a larger animal\" (held-out animals vs AwA2 big)", "animal_size_spearman", True)):
        lines.append(f"| {label} | {fmt(e[key]['base'], sp)} | {fmt(e[key]['pcclip'], sp)} |")
    ad = e["animal_difference"]
    lines.append(f"| difference classification, held-out animals (AwA2 texts) | {fmt(ad['base']['accuracy']['mean'], False)} | "
                 f"{fmt(ad['pcclip']['accuracy']['mean'], False)} |")
    r = report["rank_by_attribute"]
    for text, v in r["pcclip"]["per_attribute"].items():
        lines.append(f"| Spearman, \"{text}\" | {fmt(r['base']['per_attribute'][text]['spearman'], True)} | {fmt(v['spearman'], True)} |")
    ph = report["phrasings"]
    lines.append(f"| difference acc, trained phrasings (same pairs) | {ph['base_trained'] * 100:.1f}% | {ph['trained'] * 100:.1f}% |")
    lines.append(f"| difference acc, held-out phrasings (same pairs) | {ph['base_held_out'] * 100:.1f}% | {ph['held_out'] * 100:.1f}% |")
    ab = report.get("ablation_paper_loss")
    if ab:
        base_row = sweep["rows"][0]
        n = ab["test_pairs"]
        lines.append(f"| difference acc, reserved ({n} pairs): PC-CLIP loss alone (alpha {ab['chosen_alpha']:g}) | "
                     f"{base_row['test_difference_reserved'] * 100:.1f}% | {ab['chosen']['test_difference_reserved'] * 100:.1f}% |")
        lines.append(f"| difference acc, reserved ({n} pairs): + attribute-direction loss (shipped) | "
                     f"{base_row['test_difference_reserved'] * 100:.1f}% | {ab['with_probe_term']['test_difference_reserved'] * 100:.1f}% |")
        lines.append(f"| held-out vs trained phrasings: PC-CLIP loss alone | | {ab['chosen']['phrasings_held_out'] * 100:.1f}% vs "
                     f"{ab['chosen']['phrasings_trained'] * 100:.1f}% |")
    t = ["", "| target | met | figure |", "| --- | --- | --- |"] + [f"| {x['target']} | {'yes' if x['met'] else 'no'} | {x['figure']} |" for x in tgt]
    head = (f"Produced by `bash scripts/reproduce_default_model.sh --install` (config in the report; {minutes:.0f} min on this machine's CPU; "
            f"WiSE-FT alpha {sweep['chosen_alpha']:g}, chosen on validation photos; "
            f"{z['base']['photos_all']} CUB test photos, {report['data']['seeds']} seeds x {report['data']['pairs_per_seed']} reserved-class pairs). "
            "Report: `docs/results/default_model_report.json`.")
    if report.get("reevaluated"):
        head += f" {report['reevaluated']}"
    return "\n".join([head, ""] + lines + t + ["", f"![trade-off]({plot_rel})", ""])


def update_readme(readme: Path, block: str) -> None:
    start, end = "<!-- default-model-results:start -->", "<!-- default-model-results:end -->"
    text = readme.read_text()
    if start not in text:
        return
    pre, rest = text.split(start, 1)
    post = rest.split(end, 1)[1]
    readme.write_text(pre + start + "\n" + block + "\n" + end + post)


def reproduce(cfg: ReproduceConfig) -> dict:
    """The whole pipeline (module docstring); returns the JSON report."""
    from training.evaluate import run_evaluation

    pl = Pipeline(cfg)
    pl.image_features()
    pl.texts()
    pl.train_base()
    ablation = pl.paper_loss_ablation() if cfg.ablation and cfg.probe_weight > 0 else None
    pl.train_pcclip()
    sweep = pl.sweep()
    calibration = pl.calibration()
    out = pl.out
    base_path = pl.save(out / "pcclip-mini-base.safetensors", pl.base_keys, {"model_id": "pcclip-mini:base"}, pl.base_state)
    pc_keys = sorted(set(pl.base_keys) | set(pl.pc_keys))
    pc_path = pl.save(out / "pcclip-mini.safetensors", pc_keys, {"model_id": "pcclip-mini"})
    # prefill the evaluation's image-embedding cache from the trunk features (same numbers, no second pass)
    from training.features import ImageFeatureCache, default_cache_dir, image_cache_key
    from models.loading import load_model

    for spec in (f"pcclip-mini:{base_path}", f"pcclip-mini:{pc_path}"):
        lm = load_model(spec)
        key = image_cache_key(lm.model, lm.preprocess_cfg, "embedding")
        cache = ImageFeatureCache(default_cache_dir(), key)
        with torch.no_grad():
            emb = lm.model.visual.embed(pl.trunk.float())
        if not cache.cached(pl.paths):
            cache._save(list(pl.paths), emb)
    pl.log("evaluating (pcclip eval)")
    report = run_evaluation(f"pcclip-mini:{pc_path}", out / "eval", base=f"pcclip-mini:{base_path}", root=pl.root,
                            seeds=cfg.seeds, pairs_per_seed=cfg.pairs_per_seed, max_photos_per_class=cfg.max_photos_per_class,
                            max_classes=cfg.max_classes)
    pl.set_alpha(0.0)
    base_ph = {k: pl.difference_accuracy(v) for k, v in pl.phrasing_pairs.items()}
    pl.set_alpha(sweep["chosen_alpha"])
    ph = {k: pl.difference_accuracy(v) for k, v in pl.phrasing_pairs.items()}
    report["phrasings"] = {"trained": ph["trained"], "held_out": ph["held_out"], "base_trained": base_ph["trained"],
                           "base_held_out": base_ph["held_out"], "pairs": len(pl.phrasing_pairs["trained"]),
                           "note": "the same reserved-class test photo pairs and facts, phrased with a training template and with the held-out last template of each claim"}
    report["tradeoff"] = sweep
    if ablation is not None:
        main = next(r for r in sweep["rows"] if r["alpha"] == sweep["chosen_alpha"])
        ablation["with_probe_term"] = main
        report["ablation_paper_loss"] = ablation
    report["calibration"] = calibration
    report["config"] = asdict(cfg)
    minutes = (time.time() - pl.t0) / 60
    report["minutes"] = minutes
    report["feature_cache"] = pl.feature_cache
    report["weights_mb"] = (base_path.stat().st_size + pc_path.stat().st_size) / 1e6
    tgt = targets(report, sweep)
    report["targets"] = tgt
    summary = {"summary": report["summary"]["values"], "targets": tgt, "chosen_alpha": sweep["chosen_alpha"],
               "phrasings": report["phrasings"]}
    pl.save(out / "pcclip-mini-base.safetensors", pl.base_keys,
            {"model_id": "pcclip-mini:base", "evaluation": summary, "train": "base: image MLP head, text head, logit scale"},
            pl.base_state)
    pl.save(out / "pcclip-mini.safetensors", pc_keys,
            {"model_id": "pcclip-mini", "evaluation": summary, "calibration": calibration, "wise_alpha": sweep["chosen_alpha"],
             "train": f"PC-CLIP: last {cfg.text_layers} text layers + text head, PC-CLIP loss + CLIP loss x {cfg.clip_weight:g}"
                      f" + attribute-direction loss x {cfg.probe_weight:g} (WiSE-FT with the base)"})
    from training.evaluate import _finite

    report = _finite(report)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    if cfg.install:
        install_run(out, cfg)  # writes the run's results too
    else:
        write_results(out, report)
    pl.log("done")
    return report


def write_results(out: Path, report: dict) -> str:
    """The run's trade-off plot (`tradeoff.png`) and results table (`results.md`), from its report."""
    sweep, ablation = report["tradeoff"], report.get("ablation_paper_loss")
    plot_tradeoff(sweep["rows"], sweep["rows"][0]["test_zero_shot"], sweep["chosen_alpha"], out / "tradeoff.png",
                  ablation["rows"] if ablation else None)
    block = results_markdown(report, sweep, report["targets"], report["minutes"], "docs/results/default_model_tradeoff.png")
    (out / "results.md").write_text(block)
    return block


def reevaluate_everyday(out: str | Path) -> dict:
    """Re-run the everyday evaluations of a finished run on its own weights (after the evaluation
    changed) and rewrite its report's `everyday` section, targets and results; no training."""
    from training.evaluate import _finite, embed_model
    from training.evaluate_everyday import build_everyday_setup, evaluate_everyday
    from training.features import default_cache_dir

    from training.data import default_data_dir

    out = Path(out)
    report = json.loads((out / "report.json").read_text())
    cfg = report.get("config", {})
    root = Path(cfg["data"]) if cfg.get("data") else default_data_dir()
    everyday = build_everyday_setup(root)
    models = [embed_model(name, f"pcclip-mini:{out / fname}", everyday.paths(), root, default_cache_dir())
              for name, fname in (("base", "pcclip-mini-base.safetensors"), ("pcclip", "pcclip-mini.safetensors"))]
    report["everyday"] = evaluate_everyday(models, everyday, cfg.get("seeds", 5), cfg.get("pairs_per_seed", 500))
    report["targets"] = targets(report, report["tradeoff"])
    report["reevaluated"] = ("The everyday rows were evaluated again on the same weights after the evaluation changed "
                             "(`pcclip reproduce --reevaluate-run DIR`).")
    report = _finite(report)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    write_results(out, report)
    return report


def install_run(out: str | Path, cfg: ReproduceConfig | None = None) -> None:
    """Make a finished run the shipped default model: its weights into models/weights, its report
    and plots into docs/results, its table into the README (`pcclip reproduce --install`)."""
    import shutil

    out, cfg = Path(out), cfg or ReproduceConfig()
    report = json.loads((out / "report.json").read_text())
    block = write_results(out, report)
    wd, docs = Path(cfg.weights_dir), Path(cfg.docs_dir)
    wd.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    for name in ("pcclip-mini-base.safetensors", "pcclip-mini.safetensors"):
        shutil.copy(out / name, wd / name)
    shutil.copy(out / "tradeoff.png", docs / "default_model_tradeoff.png")
    shutil.copy(out / "eval" / "summary.png", docs / "default_model_summary.png")
    (docs / "default_model_report.json").write_text(json.dumps(report, indent=2))
    (docs / "default_model.md").write_text(block)
    update_readme(Path(cfg.readme), block)
