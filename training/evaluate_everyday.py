"""Evaluation on everyday photos: held-out ImageNet classes, COCO val2017, held-out AwA2 animals.

- zero-shot on held-out ImageNet classes: the sample photo of each of the 200 classes no training
  sees, all 200 names as candidates (prompts `EVERYDAY_TEMPLATES`); top-1. Also "described": each
  class's prompt ensemble plus two WordNet description prompts (`described_prompts`: its parent
  concept, its gloss); that ensemble was chosen on validation (100 seen classes treated as unseen,
  see `scripts/experiments/README.md`), not on these photos;
- COCO val2017 (never trained on): the photos with instance annotations, the 80 COCO category
  names as candidates; right when the top label is one of the photo's annotated categories;
- animals: photos of the held-out AwA2 animals (their ImageNet sample photos). Difference
  accuracy on random photo pairs of two different animals, each with a true AwA2 attribute
  difference (`AttributeWriter` on the AwA2 table, every claim and phrasing), over seeds; and the
  Spearman correlation of "a larger animal" scores with AwA2's `big` strength.

Metric functions take an `EmbeddedModel` (cached image embeddings and a text encoder), so
`pcclip eval` and `pcclip reproduce` share them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from models import difference as dm
from training.evaluate import EmbeddedModel, attribute_spearman, difference_correct, mean_sem
from training.everyday import (EVERYDAY_TEMPLATES, ImageNetClasses, animal_name, coco_category_names,
                               coco_category_photos, load_awa2_heldout, load_awa2_imagenet, load_imagenet_heldout)

ANIMAL_SIZE_TEXT = "a larger animal"


@dataclass
class EverydaySetup:
    imagenet_paths: list[str]
    imagenet_labels: list[str]  # readable names, in the order of the paths (one photo per class)
    imagenet_descriptions: list[list[str]]  # `described_prompts` of each class
    coco_paths: list[str]
    coco_categories: list[list[str]]
    coco_names: list[str]
    animal_paths: list[str]
    animal_classes: list[str]  # AwA2 class of each animal photo
    awa2: object  # AttributeTable

    def paths(self) -> list[str]:
        return sorted(set(self.imagenet_paths) | set(self.coco_paths) | set(self.animal_paths))


def build_everyday_setup(root: Path) -> EverydaySetup:
    """The held-out photos and labels of the three everyday evaluations."""
    from training.data import AttributeTable

    classes = ImageNetClasses(root)
    held = load_imagenet_heldout()
    coco = coco_category_photos(root, "test")
    awa2 = load_awa2_imagenet()
    animals = [(classes[i].image, a) for a in load_awa2_heldout() for i in awa2[a]]
    return EverydaySetup([classes[i].image for i in held], [classes[i].label for i in held],
                         [described_prompts(classes[i]) for i in held],
                         [p for p, _ in coco], [c for _, c in coco], coco_category_names(root),
                         [p for p, _ in animals], [a for _, a in animals], AttributeTable.from_awa2(root))


def class_embeddings(model: EmbeddedModel, names: Sequence[str], templates: Sequence[str] = EVERYDAY_TEMPLATES) -> np.ndarray:
    """Zero-shot class embeddings n(mean_t n(f(template_t(name))))."""
    return dm.class_embeddings(names, model.encode_texts, templates)


def described_prompts(c) -> list[str]:
    """Two prompts that describe an ImageNet class with WordNet: its parent concept and its gloss."""
    return [f"a photo of a {c.label}, a kind of {c.parent}.", f"a photo of a {c.label}, {c.gloss}."]


def imagenet_heldout_top1(model: EmbeddedModel, setup: EverydaySetup, described: bool = False) -> float:
    """Top-1 of the held-out classes' photos among all held-out names; `described`: each class
    embedding is n(template ensemble + sum of its normalised description prompts)."""
    emb = class_embeddings(model, setup.imagenet_labels)
    if described:
        n = len(setup.imagenet_descriptions[0])
        desc = model.encode_texts([t for d in setup.imagenet_descriptions for t in d])
        emb = dm.normalize(emb + desc.reshape(len(emb), n, -1).sum(1))
    logits = model.image_matrix(setup.imagenet_paths) @ emb.T
    return float(np.mean(logits.argmax(1) == np.arange(len(setup.imagenet_labels))))


def coco_top1(model: EmbeddedModel, setup: EverydaySetup) -> float:
    """Share of COCO val photos whose top label (of the 80 names) is an annotated category."""
    logits = model.image_matrix(setup.coco_paths) @ class_embeddings(model, setup.coco_names).T
    top = [setup.coco_names[i] for i in logits.argmax(1)]
    return float(np.mean([t in cats for t, cats in zip(top, setup.coco_categories)]))


def sample_animal_pairs(setup: EverydaySetup, n: int, seed: int) -> list[dict]:
    """n photo pairs of two different held-out animals with a true AwA2 difference text."""
    from training.pairs.attributes import AttributeWriter

    writer = AttributeWriter(setup.awa2, noun="animal", seed=seed)
    rng = random.Random(seed)
    by_class: dict[str, list[str]] = {}
    for p, c in zip(setup.animal_paths, setup.animal_classes):
        by_class.setdefault(c, []).append(p)
    classes = sorted(by_class)
    out, cache = [], {}
    while len(out) < n:
        a, b = rng.sample(classes, 2)
        if (a, b) not in cache:
            cache[(a, b)] = writer.all_phrasings(a, b)
        if not cache[(a, b)]:
            continue
        d = rng.choice(cache[(a, b)])
        out.append({"image_a": rng.choice(by_class[a]), "image_b": rng.choice(by_class[b]), "text": d.text,
                    "group": d.group, "class_a": a, "class_b": b})
    return out


def animal_difference(model: EmbeddedModel, pair_sets: list[list[dict]]) -> dict:
    """Difference accuracy on animal photo pairs: mean and standard error over the seeds, and per group."""
    per_seed, groups = [], {}
    for pairs in pair_sets:
        ok = difference_correct(model.image_matrix([p["image_a"] for p in pairs]),
                                model.image_matrix([p["image_b"] for p in pairs]),
                                model.encode_texts([p["text"] for p in pairs]))
        per_seed.append(float(ok.mean()))
        for p, c in zip(pairs, ok):
            groups.setdefault(p["group"], []).append(bool(c))
    return {"accuracy": mean_sem(per_seed), "per_group": {g: float(np.mean(v)) for g, v in sorted(groups.items())}}


def animal_size_spearman(model: EmbeddedModel, setup: EverydaySetup) -> float:
    """Spearman of the "a larger animal" scores of the held-out animal photos with AwA2's `big`."""
    values = np.array([setup.awa2.row(c)["big"] for c in setup.animal_classes])
    text = model.encode_texts([ANIMAL_SIZE_TEXT])[0]
    return attribute_spearman(model.image_matrix(setup.animal_paths), text, values)


def evaluate_everyday(models: list[EmbeddedModel], setup: EverydaySetup, seeds: int = 5,
                      pairs_per_seed: int = 500) -> dict:
    """Every everyday evaluation for each model: {metric: {model name: value}} plus the data sizes."""
    pair_sets = [sample_animal_pairs(setup, pairs_per_seed, seed) for seed in range(seeds)]
    out: dict = {"data": {"imagenet_heldout_photos": len(setup.imagenet_paths), "coco_val_photos": len(setup.coco_paths),
                          "animal_photos": len(setup.animal_paths), "animals": sorted(set(setup.animal_classes)),
                          "animal_pairs": f"{seeds} seeds x {pairs_per_seed}"}}
    for m in models:
        out.setdefault("imagenet_heldout_top1", {})[m.name] = imagenet_heldout_top1(m, setup)
        out.setdefault("imagenet_heldout_top1_described", {})[m.name] = imagenet_heldout_top1(m, setup, described=True)
        out.setdefault("coco_val_top1", {})[m.name] = coco_top1(m, setup)
        out.setdefault("animal_difference", {})[m.name] = animal_difference(m, pair_sets)
        out.setdefault("animal_size_spearman", {})[m.name] = animal_size_spearman(m, setup)
    return out
