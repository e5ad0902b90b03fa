"""Tiny training inputs built from a few real CUB photos."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

TEXTS = (
    "The first bird is larger than the second.",
    "The first bird has a red crown, while the second has a black crown.",
    "Unlike the second, the first bird has a striped breast.",
    "The first bird is smaller than the second.",
    "The first bird has a longer bill than the second.",
)


def _photos(data_dir: Path, n_classes: int = 6, per_class: int = 3) -> dict[str, list[str]]:
    root = data_dir / "cub100" / "images"
    classes = sorted(p.name for p in root.iterdir())[:n_classes]
    return {c: [f"cub100/images/{c}/{p.name}" for p in sorted((root / c).glob("*.jpg"))[:per_class]] for c in classes}


@pytest.fixture(scope="session")
def tiny_pairs(data_dir, tmp_path_factory) -> Path:
    """40 pair records (shared contract) over 18 photos of 6 classes, with distinct texts."""
    photos = _photos(data_dir)
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    with open(path, "w") as f:
        for i in range(40):
            a, b = rng.sample(sorted(photos), 2)
            f.write(json.dumps({"image_a": rng.choice(photos[a]), "image_b": rng.choice(photos[b]),
                                "text": f"{TEXTS[i % len(TEXTS)]} ({i})", "writer": "attributes",
                                "class_a": a, "class_b": b, "caption_a": None, "caption_b": None,
                                "source": {"test": True}}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_captions(data_dir, tmp_path_factory) -> Path:
    """18 image-caption records (JSONL caption source)."""
    photos = _photos(data_dir)
    path = tmp_path_factory.mktemp("captions") / "captions.jsonl"
    with open(path, "w") as f:
        for c, paths in photos.items():
            for k, p in enumerate(paths):
                f.write(json.dumps({"image": p, "caption": f"a photo of a {c.replace('_', ' ').lower()} number {k}."}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_attribute_pairs(data_dir, tmp_path_factory) -> Path:
    """48 attribute-writer pair records over the same 18 photos: true texts, with their facts in `source`."""
    from training.data import AttributeTable
    from training.pairs.attributes import AttributeWriter

    photos = _photos(data_dir)
    writer = AttributeWriter(AttributeTable.from_cub(data_dir), noun="bird")
    rng = random.Random(1)
    path = tmp_path_factory.mktemp("pairs") / "attribute_pairs.jsonl"
    with open(path, "w") as f:
        n = 0
        while n < 48:
            a, b = rng.sample(sorted(photos), 2)
            diffs = writer.describe(a, b, rng=rng)
            if not diffs:
                continue
            d = rng.choice(diffs)
            f.write(json.dumps({"image_a": rng.choice(photos[a]), "image_b": rng.choice(photos[b]), "text": d.text,
                                "writer": "attributes", "class_a": a, "class_b": b, "source": d.source()}) + "\n")
            n += 1
    return path
