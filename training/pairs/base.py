"""The pair record (the shared JSONL contract), the writer interface and the image-pair samplers.

A writer turns pairs of images into `PairRecord`s: `writer.pairs(n, rng)` yields up to `n` records.
All randomness comes from the `random.Random` passed in, so the same seed gives byte-identical
JSONL (`write_jsonl`).
"""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.data import AttributeTable, CocoImage, CubDataset, CubImage, readable_class_name, size_score

WRITERS = ("attributes", "llm", "captions")


@dataclass(frozen=True)
class PairRecord:
    """Two images and the text describing how the first differs from the second."""

    image_a: str   # relative to the data root
    image_b: str
    text: str
    writer: str    # attributes | llm | captions
    class_a: str | None = None
    class_b: str | None = None
    caption_a: str | None = None
    caption_b: str | None = None
    source: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The record in the contract's key order."""
        return {"image_a": self.image_a, "image_b": self.image_b, "text": self.text,
                "writer": self.writer, "class_a": self.class_a, "class_b": self.class_b,
                "caption_a": self.caption_a, "caption_b": self.caption_b, "source": self.source}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict) -> PairRecord:
        missing = {"image_a", "image_b", "text", "writer"} - set(data)
        if missing:
            raise ValueError(f"pair record misses {sorted(missing)}")
        return cls(**{k: data.get(k) for k in ("image_a", "image_b", "text", "writer", "class_a",
                                               "class_b", "caption_a", "caption_b")},
                   source=data.get("source") or {})


class PairWriter(ABC):
    """Writes difference texts for sampled image pairs."""

    name: str = ""

    @abstractmethod
    def pairs(self, n: int, rng: random.Random) -> Iterator[PairRecord]:
        """Yield up to `n` records; every random choice comes from `rng`."""


def write_jsonl(records: Iterable[PairRecord], path: str | Path) -> int:
    """Write records, one JSON object a line; returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(record.to_json() + "\n")
            count += 1
    return count


def read_jsonl(path: str | Path) -> list[PairRecord]:
    """Read a pair file written by `write_jsonl`."""
    with open(path, encoding="utf-8") as f:
        return [PairRecord.from_dict(json.loads(line)) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------
# Sampling image pairs
# ---------------------------------------------------------------------------------------------

class CubPairSampler:
    """Pairs of CUB photos of two different classes from one split."""

    def __init__(self, dataset: CubDataset, split: str | None = "train"):
        self.split = split
        self.by_class = {c: dataset.images_of(c, split) for c in dataset.classes}
        self.classes = [c for c, images in self.by_class.items() if images]
        if len(self.classes) < 2:
            raise ValueError("need photos of at least two classes to make pairs")

    def sample(self, rng: random.Random) -> tuple[CubImage, CubImage]:
        class_a, class_b = rng.sample(self.classes, 2)
        return rng.choice(self.by_class[class_a]), rng.choice(self.by_class[class_b])


class CocoPairSampler:
    """Pairs of two different COCO photos, each with one of its captions."""

    def __init__(self, images: Sequence[CocoImage]):
        self.images = list(images)
        if len(self.images) < 2:
            raise ValueError("need at least two COCO photos to make pairs")

    def sample(self, rng: random.Random) -> tuple[CocoImage, str, CocoImage, str]:
        a, b = rng.sample(self.images, 2)
        return a, rng.choice(a.captions), b, rng.choice(b.captions)


# ---------------------------------------------------------------------------------------------
# Captions for CUB photos (CUB has no human captions here): from class name and attributes
# ---------------------------------------------------------------------------------------------

def with_article(phrase: str) -> str:
    """`a red crown`, `an olive crown`, `an Ivory Gull`."""
    return ("an " if phrase[:1].lower() in ("a", "e", "i", "o", "u") else "a ") + phrase


SIZE_WORDS = ("very small", "small", "medium-sized", "large", "very large")


def cub_class_caption(table: AttributeTable, class_name: str) -> str:
    """`a Red winged Blackbird, a small black bird with a black crown`."""
    score = size_score(table, class_name)
    size = SIZE_WORDS[int(np.clip(round(score), 1, 5)) - 1]
    row = table.row(class_name)

    def dominant(group: str) -> str:
        attrs = table.groups()[group]
        return max(attrs, key=lambda a: (row[a], a)).split("::")[1]

    return (f"{with_article(readable_class_name(class_name))}, a {size} {dominant('has_primary_color')}"
            f" bird with a {dominant('has_crown_color')} crown")


@dataclass(frozen=True)
class CaptionedPair:
    """Two images with one caption each (the input of the captions and llm writers)."""

    image_a: str
    image_b: str
    caption_a: str
    caption_b: str
    class_a: str | None = None
    class_b: str | None = None


class CaptionedPairSource(ABC):
    """Samples pairs of captioned images."""

    @abstractmethod
    def sample(self, rng: random.Random) -> CaptionedPair: ...


class CocoCaptionSource(CaptionedPairSource):
    """Two different COCO photos, one of each photo's human captions."""

    def __init__(self, images: Sequence[CocoImage]):
        self.sampler = CocoPairSampler(images)

    def sample(self, rng: random.Random) -> CaptionedPair:
        a, cap_a, b, cap_b = self.sampler.sample(rng)
        return CaptionedPair(a.path, b.path, cap_a, cap_b)


class CubCaptionSource(CaptionedPairSource):
    """CUB photos of two different classes, captioned from class name and attributes."""

    def __init__(self, dataset: CubDataset, table: AttributeTable, split: str | None = "train"):
        self.sampler = CubPairSampler(dataset, split)
        self.captions = {c: cub_class_caption(table, c) for c in self.sampler.classes}

    def sample(self, rng: random.Random) -> CaptionedPair:
        a, b = self.sampler.sample(rng)
        return CaptionedPair(a.path, b.path, self.captions[a.class_name],
                             self.captions[b.class_name], a.class_name, b.class_name)
