"""The paper's evaluation protocols on the real data, base model and PC-CLIP side by side.

- difference-based classification: random pairs of reserved-class test photos from different
  classes, each with a true difference text from the attribute writer; correct when
  cos(f(T), d(g(I1), g(I2))) > 0 (chance 50%); mean and standard error over seeds, overall and
  per attribute group;
- rank by attribute: Spearman correlation between the scores cos(f(T), n(g(I))) of the
  reserved-class photos for an attribute text and their class attribute percentage;
- zero-shot top-1 on the CUB test split: all classes, and the reserved classes alone;
- comparative prompting: zero-shot with and without hints (attribute writer) on the most
  confused class pairs of the zero-shot run.

The metric functions take embeddings (numpy) and are independent of any model; `run_evaluation`
computes embeddings (image features through the on-disk cache) and writes `report.json` and PNGs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from models import difference as dm

log = logging.getLogger(__name__)

# (group, attribute text, table column; None = the ordinal size score)
RANK_ATTRIBUTES: tuple[tuple[str, str, str | None], ...] = (
    ("size", "a larger bird", None),
    ("colour", "a bird with a redder crown", "has_crown_color::red"),
    ("colour", "a bird with a yellower breast", "has_breast_color::yellow"),
    ("colour", "a bird with blacker wings", "has_wing_color::black"),
    ("colour", "a bluer bird", "has_primary_color::blue"),
    ("colour", "a whiter bird", "has_primary_color::white"),
    ("pattern", "a bird with a more striped breast", "has_breast_pattern::striped"),
    ("shape", "a bird with a longer bill", "has_bill_length::longer_than_head"),
)


# -- metrics on embeddings (pure numpy) ------------------------------------------------------------

def mean_sem(values: Sequence[float]) -> dict:
    """Mean and standard error of the mean (ddof=1; 0 for a single value)."""
    v = np.asarray([x for x in values if not (isinstance(x, float) and math.isnan(x))], dtype=np.float64)
    if len(v) == 0:
        return {"mean": None, "sem": None, "n": 0}
    sem = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "sem": sem, "n": int(len(v))}


def difference_correct(image_a: np.ndarray, image_b: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """Per pair: True when cos(f(T), d(g(I1), g(I2))) > 0. Shapes [N, D] each."""
    return dm.compare(image_a, image_b, texts) > 0


def attribute_spearman(images: np.ndarray, text: np.ndarray, values: np.ndarray) -> float:
    """Spearman correlation between the scores cos(f(T), n(g(I))) and the attribute values."""
    from scipy.stats import spearmanr

    values = np.asarray(values, dtype=np.float64)
    if len(values) < 3 or np.nanstd(values) == 0:
        return float("nan")
    return float(spearmanr(dm.attribute_scores(images, text), values).statistic)


def zero_shot_predictions(images: np.ndarray, class_embs: np.ndarray) -> np.ndarray:
    """Index of the most similar class per image."""
    return np.argmax(dm.zero_shot_logits(images, class_embs), axis=1)


def top1(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(labels))) if len(labels) else float("nan")


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(predictions)), 1)
    return m


def most_confused_pairs(confusion: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    """The k class pairs (i < j) with the most mistakes between them, both directions: [(i, j, count)]."""
    sym = confusion + confusion.T
    iu, ju = np.triu_indices(len(confusion), k=1)
    counts = sym[iu, ju]
    order = np.lexsort((ju, iu, -counts))  # most mistakes first, ties by index
    return [(int(iu[o]), int(ju[o]), int(counts[o])) for o in order[:k] if counts[o] > 0]


# -- embedding a model ---------------------------------------------------------------------------------

@dataclass
class EmbeddedModel:
    """A loaded model with cached image embeddings and a text encoder."""

    name: str
    spec: str
    loaded: object
    encode_texts: Callable[[list[str]], np.ndarray]
    images: dict[str, np.ndarray] = field(default_factory=dict)

    def image_matrix(self, paths: Sequence[str]) -> np.ndarray:
        return np.stack([self.images[p] for p in paths]) if paths else np.zeros((0, 1), np.float32)


def embed_model(name: str, spec: str, paths: Sequence[str], root: Path, cache_dir: Path, device: str = "cpu",
                batch_size: int = 32, loaded=None) -> EmbeddedModel:
    """Load a model (unless `loaded` is given) and embed the images (through the on-disk cache, keyed by the image tower)."""
    import torch

    from models.loading import load_model
    from training.features import ImageFeatureCache, image_cache_key

    loaded = loaded or load_model(spec)
    model = loaded.model.to(device).eval()
    key = image_cache_key(model, loaded.preprocess_cfg, "embedding")
    feats = ImageFeatureCache(cache_dir, key).get(list(paths), root=root, compute=model.encode_image,
                                                  preprocess_cfg=loaded.preprocess_cfg, device=device, batch_size=batch_size)
    feats = dm.normalize(feats.numpy())
    pad_id = getattr(getattr(model, "text", None), "pad_id", None)  # pcclip text towers pool over real tokens only

    def encode_texts(texts: list[str]) -> np.ndarray:
        """Normalised text embeddings; unique texts once, batched by length, all-pad columns dropped (pcclip)."""
        unique = list(dict.fromkeys(texts))
        ids = loaded.tokenizer(unique)
        lengths = (ids != (pad_id if pad_id is not None else -1)).sum(axis=1)
        order = np.argsort(lengths, kind="stable")
        out = np.zeros((len(unique), loaded.embed_dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = ids[rows]
                if pad_id is not None:
                    batch = batch[:, : max(1, int(lengths[rows].max()))]
                out[rows] = model.encode_text(torch.from_numpy(batch).to(device)).float().cpu().numpy()
        index = {t: i for i, t in enumerate(unique)}
        return dm.normalize(out[[index[t] for t in texts]]) if texts else np.zeros((0, loaded.embed_dim), np.float32)

    return EmbeddedModel(name, spec, loaded, encode_texts, dict(zip(paths, feats)))


# -- the protocols ---------------------------------------------------------------------------------------

@dataclass
class EvalSetup:
    """The data every protocol reads, built once."""

    root: Path
    reserved: list[str]
    classes: list[str]                     # all CUB classes with photos
    test_images: list                      # CubImage of the test split (limited per class)
    table: object                          # AttributeTable
    writer: object                         # AttributeWriter


def build_setup(root: Path, split_file: Path, max_photos_per_class: int | None, seed: int = 0,
                max_classes: int | None = None) -> EvalSetup:
    """The CUB test photos (all classes, or the reserved ones first up to `max_classes`), table and writer."""
    from training.data import AttributeTable, CubDataset, load_class_split

    from training.pairs.attributes import AttributeWriter

    reserved = load_class_split(split_file)
    only = None
    if max_classes:
        all_classes = CubDataset(root).classes
        kept = [c for c in all_classes if c in set(reserved)][:max_classes]
        kept += [c for c in all_classes if c not in set(reserved)][: max_classes - len(kept)]
        only = kept
    cub = CubDataset(root, only_classes=only)
    reserved = [c for c in reserved if c in set(cub.classes)]
    test = []
    for c in cub.classes:
        images = cub.images_of(c, "test")
        test.extend(images[:max_photos_per_class] if max_photos_per_class else images)
    table = AttributeTable.from_cub(root)
    return EvalSetup(root, reserved, list(cub.classes), test, table, AttributeWriter(table, noun="bird", seed=seed))


def sample_difference_pairs(setup: EvalSetup, n_pairs: int, seed: int) -> list[dict]:
    """Random pairs of reserved-class test photos from different classes, each with one true difference."""
    rng = random.Random(seed)
    reserved = set(setup.reserved)
    photos = [im for im in setup.test_images if im.class_name in reserved]
    if len({im.class_name for im in photos}) < 2:
        raise ValueError("difference classification needs test photos of at least two reserved classes")
    out, tries = [], 0
    while len(out) < n_pairs and tries < 50 * n_pairs:
        tries += 1
        a, b = rng.sample(photos, 2)
        if a.class_name == b.class_name:
            continue
        diffs = setup.writer.describe(a.class_name, b.class_name, rng=rng)
        if not diffs:
            continue
        d = rng.choice(diffs)
        out.append({"image_a": a.path, "image_b": b.path, "class_a": a.class_name, "class_b": b.class_name,
                    "text": d.text, "group": d.group})
    return out


def evaluate_difference(models: list[EmbeddedModel], pair_sets: list[list[dict]]) -> dict:
    """Accuracy of cos(f(T), d) > 0 per seed -> mean/sem, overall and per group, for each model."""
    texts = sorted({p["text"] for pairs in pair_sets for p in pairs})
    out = {}
    for m in models:
        temb = dict(zip(texts, m.encode_texts(texts)))
        per_seed, per_group = [], {}
        for pairs in pair_sets:
            correct = difference_correct(m.image_matrix([p["image_a"] for p in pairs]),
                                         m.image_matrix([p["image_b"] for p in pairs]),
                                         np.stack([temb[p["text"]] for p in pairs]))
            per_seed.append(float(correct.mean()))
            groups = np.array([p["group"] for p in pairs])
            for g in sorted(set(groups)):
                per_group.setdefault(g, []).append(float(correct[groups == g].mean()))
        out[m.name] = {"accuracy": mean_sem(per_seed), "per_seed": per_seed,
                       "per_group": {g: mean_sem(v) for g, v in per_group.items()},
                       "pairs_per_seed": len(pair_sets[0]) if pair_sets else 0}
    return out


def attribute_values(setup: EvalSetup, column: str | None, classes: Sequence[str]) -> np.ndarray:
    from training.data import size_score

    if column is None:
        return np.array([size_score(setup.table, c) for c in classes])
    return np.array([setup.table.value(c, column) for c in classes])


def evaluate_ranking(models: list[EmbeddedModel], setup: EvalSetup) -> dict:
    """Spearman per attribute text over the reserved-class test photos, for each model."""
    photos = [im for im in setup.test_images if im.class_name in set(setup.reserved)]
    paths = [im.path for im in photos]
    out = {}
    for m in models:
        images = m.image_matrix(paths)
        texts = m.encode_texts([t for _, t, _ in RANK_ATTRIBUTES])
        per_attr = {}
        for (group, text, column), temb in zip(RANK_ATTRIBUTES, texts):
            values = attribute_values(setup, column, [im.class_name for im in photos])
            per_attr[text] = {"group": group, "attribute": column or "size score",
                              "spearman": attribute_spearman(images, temb, values)}
        out[m.name] = {"per_attribute": per_attr,
                       "mean_spearman": mean_sem([v["spearman"] for v in per_attr.values()]),
                       "photos": len(paths)}
    return out


def class_prompts(classes: Sequence[str], model: EmbeddedModel) -> np.ndarray:
    from training.records import CAPTION_TEMPLATES, class_caption_name

    return dm.class_embeddings([class_caption_name(c) for c in classes], model.encode_texts, CAPTION_TEMPLATES)


def evaluate_zero_shot(models: list[EmbeddedModel], setup: EvalSetup, confused_pairs: int = 5) -> dict:
    """Zero-shot top-1 (all classes; reserved classes alone) and comparative prompting, per model."""
    photos = setup.test_images
    index = {c: i for i, c in enumerate(setup.classes)}
    labels = np.array([index[im.class_name] for im in photos])
    reserved = [c for c in setup.classes if c in set(setup.reserved)]
    r_index = {c: i for i, c in enumerate(reserved)}
    r_photos = [im for im in photos if im.class_name in r_index]
    r_labels = np.array([r_index[im.class_name] for im in r_photos])
    out = {}
    for m in models:
        images = m.image_matrix([im.path for im in photos])
        class_embs = class_prompts(setup.classes, m)
        preds = zero_shot_predictions(images, class_embs)
        r_class_embs = class_embs[[index[c] for c in reserved]]
        r_preds = zero_shot_predictions(m.image_matrix([im.path for im in r_photos]), r_class_embs)
        confusion = confusion_matrix(preds, labels, len(setup.classes))
        pairs = most_confused_pairs(confusion, confused_pairs)
        hints, hinted = [], set()
        for i, j, _ in pairs:
            a, b = setup.classes[i], setup.classes[j]
            try:
                hints.append(dm.Hint(a, b, setup.writer.hint(a, b)))
                hinted |= {i, j}
            except ValueError:  # the writer knows no clear difference between the two
                continue
        with_hints = class_embs
        if hints:
            hint_embs = m.encode_texts([h.text for h in hints])
            with_hints = dm.comparative_prompting(setup.classes, class_embs, hints, hint_embs)
        preds_hint = zero_shot_predictions(images, with_hints)
        on_hinted = np.isin(labels, sorted(hinted))
        out[m.name] = {
            "top1_all": top1(preds, labels), "classes_all": len(setup.classes), "photos_all": len(photos),
            "top1_reserved": top1(r_preds, r_labels), "classes_reserved": len(reserved), "photos_reserved": len(r_photos),
            "comparative_prompting": {
                "pairs": [{"a": setup.classes[i], "b": setup.classes[j], "mistakes": c} for i, j, c in pairs],
                "hints": [{"a": h.a, "b": h.b, "text": h.text} for h in hints],
                "top1_all_without": top1(preds, labels), "top1_all_with": top1(preds_hint, labels),
                "top1_hinted_without": top1(preds[on_hinted], labels[on_hinted]),
                "top1_hinted_with": top1(preds_hint[on_hinted], labels[on_hinted]),
                "photos_hinted": int(on_hinted.sum()),
            },
        }
    return out


# -- plots ---------------------------------------------------------------------------------------------

def plot_summary(report: dict, path: Path) -> Path:
    """Bar chart: base vs PC-CLIP per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = report["summary"]["tasks"]
    names = report["summary"]["models"]
    x = np.arange(len(tasks))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks)), 4))
    for k, name in enumerate(names):
        vals = [report["summary"]["values"][name].get(t) for t in tasks]
        errs = [report["summary"]["errors"][name].get(t) or 0 for t in tasks]
        bars = ax.bar(x + k * width, [v if v is not None else 0 for v in vals], width, yerr=errs, label=name, capsize=3)
        for b, v in zip(bars, vals):
            ax.annotate("n/a" if v is None else f"{v:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance (difference acc)")
    ax.set_xticks(x + width * (len(names) - 1) / 2, tasks, rotation=15)
    ax.set_title(report["summary"]["title"])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ranked_strip(models: list[EmbeddedModel], setup: EvalSetup, text: str, path: Path, n: int = 8) -> Path:
    """One row per model: reserved-class photos ranked by `text`, most to least, n evenly spaced ranks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    photos = [im for im in setup.test_images if im.class_name in set(setup.reserved)]
    n = min(n, len(photos))
    fig, axes = plt.subplots(len(models), n, figsize=(1.8 * n, 2.5 * len(models) + 0.4), squeeze=False)
    for r, m in enumerate(models):
        order, scores = dm.rank(m.image_matrix([im.path for im in photos]), m.encode_texts([text])[0])
        picks = np.linspace(0, len(order) - 1, n).round().astype(int)
        for c, k in enumerate(picks):
            im = photos[order[k]]
            ax = axes[r][c]
            with Image.open(setup.root / im.path) as img:
                ax.imshow(img.convert("RGB").resize((128, 128)))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"#{k + 1} {scores[k]:.3f}\n{im.class_name[:18]}", fontsize=6)
            if c == 0:
                ax.set_ylabel(m.name, fontsize=9)
    fig.suptitle(f'reserved-class photos ranked by "{text}" (left: most)', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the whole evaluation --------------------------------------------------------------------------------

def _summary(report: dict, names: list[str]) -> dict:
    values, errors = {}, {}
    for name in names:
        d = report["difference_classification"][name]["accuracy"]
        r = report["rank_by_attribute"][name]["mean_spearman"]
        z = report["zero_shot"][name]
        cp = z["comparative_prompting"]
        values[name] = {"difference acc": d["mean"], "rank spearman": r["mean"], "zero-shot all": z["top1_all"],
                        "zero-shot reserved": z["top1_reserved"], "hinted w/o hints": cp["top1_hinted_without"],
                        "hinted with hints": cp["top1_hinted_with"]}
        values[name] = {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in values[name].items()}
        errors[name] = {"difference acc": d["sem"], "rank spearman": r["sem"]}
    return {"models": names, "tasks": list(values[names[0]]), "values": values, "errors": errors,
            "title": " vs ".join(f"{n} ({report['models'][n]['model_id']})" for n in names)}


def run_evaluation(model: str, out: Path, base: str | None = None, root: Path | None = None,
                   split_file: Path | None = None, seeds: int = 5, pairs_per_seed: int = 500,
                   max_photos_per_class: int | None = None, max_classes: int | None = None, confused_pairs: int = 5,
                   cache_dir: Path | None = None, device: str = "cpu", batch_size: int = 32,
                   rank_text: str = "a larger bird") -> dict:
    """Evaluate a model (and its base) with every protocol; writes report.json and PNGs in `out`."""
    from models.loading import load_model, load_starting_model
    from training.data import RESERVED_SPLIT, default_data_dir
    from training.features import default_cache_dir

    root = Path(root) if root else default_data_dir()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    setup = build_setup(root, Path(split_file) if split_file else RESERVED_SPLIT, max_photos_per_class, max_classes=max_classes)
    from training.evaluate_everyday import build_everyday_setup, evaluate_everyday

    everyday = build_everyday_setup(root)
    base_loaded = None
    if base is None:  # the model the checkpoint was trained from (the same random init for a random base)
        trained = load_model(model)
        if trained.base_spec != model:
            base_loaded = load_starting_model(trained)
            base = base_loaded.spec
    specs = ([("base", base)] if base else []) + [("pcclip", model)]
    paths = sorted({im.path for im in setup.test_images} | set(everyday.paths()))
    models: list[EmbeddedModel] = []
    for name, spec in specs:
        same = next((m for m in models if m.spec == spec), None)  # one load when both sides are the same spec
        models.append(dataclasses.replace(same, name=name) if same else
                      embed_model(name, spec, paths, root, Path(cache_dir) if cache_dir else default_cache_dir(), device,
                                  batch_size, loaded=base_loaded if name == "base" else None))
    pair_sets = [sample_difference_pairs(setup, pairs_per_seed, seed) for seed in range(seeds)]
    report = {
        "models": {m.name: {"spec": m.spec, "model_id": m.loaded.model_id} for m in models},
        "data": {"root": str(root), "reserved_classes": setup.reserved, "test_photos": len(setup.test_images),
                 "max_photos_per_class": max_photos_per_class, "classes": len(setup.classes), "seeds": seeds, "pairs_per_seed": pairs_per_seed},
        "difference_classification": evaluate_difference(models, pair_sets),
        "rank_by_attribute": evaluate_ranking(models, setup),
        "zero_shot": evaluate_zero_shot(models, setup, confused_pairs),
        "everyday": evaluate_everyday(models, everyday, seeds, pairs_per_seed),
    }
    names = [m.name for m in models]
    report["summary"] = _summary(report, names)
    report["plots"] = {"summary": str(plot_summary(report, out / "summary.png")),
                       "ranked_strip": str(plot_ranked_strip(models, setup, rank_text, out / "ranked_strip.png"))}
    report = _finite(report)
    (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    return report


def _finite(o):
    """numpy scalars -> Python; NaN (an undefined correlation) -> None, so the report is strict JSON."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o
