"""Readers for the shared data (`../shared/data`): CUB100 photos, class attribute tables, COCO captions.

Paths in records are relative to the data root (`cub100/images/<Class>/NNNN.jpg`,
`coco-mini/val2017/<id>.jpg`), so a pair file is portable between machines. Class splits are
data: `training/splits/cub100_reserved.txt` names the classes reserved for evaluation; every
reader takes `exclude_classes` / `only_classes` so reserved classes can be kept out of training.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SPLITS_DIR = Path(__file__).resolve().parent / "splits"
RESERVED_SPLIT = SPLITS_DIR / "cub100_reserved.txt"


def default_data_dir() -> Path:
    """The shared data root: `$PCCLIP_DATA`, else `../shared/data` next to the repository."""
    return Path(os.environ.get("PCCLIP_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


def _read_id_pairs(path: Path) -> list[tuple[str, str]]:
    """Lines `<a>, <b>` (CUB's metadata files)."""
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            left, right = line.split(",", 1)
            rows.append((left.strip(), right.strip()))
    return rows


def load_class_split(path: str | Path = RESERVED_SPLIT) -> list[str]:
    """Class names listed in a split file, one per line (blank lines and `#` comments skipped)."""
    names = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate class names")
    return names


def _class_filter(classes: Iterable[str], exclude_classes=(), only_classes=None) -> list[str]:
    exclude = set(exclude_classes or ())
    only = None if only_classes is None else set(only_classes)
    return [c for c in classes if c not in exclude and (only is None or c in only)]


# --------------------------------------------------------------------------------------------
# CUB100 photos
# --------------------------------------------------------------------------------------------

# Which flag in cub100/train_test_split.txt marks a training photo. The data README says
# "1 = train" but also "2,999 train, 2,903 test"; in the file, flag 0 has 2,999 photos, exactly
# 30 per class in 99 of the 100 classes (the shape of the original CUB training split), and flag 1
# has 2,903 photos with 20-30 per class. We follow the counts and the per-class structure.
CUB_TRAIN_FLAG = "0"


@dataclass(frozen=True)
class CubImage:
    image_id: int
    class_name: str
    path: str  # relative to the data root: cub100/images/<Class>/NNNN.jpg
    is_train: bool


class CubDataset:
    """The 100 CUB classes with photos: classes, images with class and train/test split.

    `exclude_classes` drops classes (and their photos); `only_classes` keeps just those.
    Unknown class names in either raise ValueError, so a typo cannot silently leak a class.
    """

    def __init__(self, root: str | Path | None = None, exclude_classes: Iterable[str] = (),
                 only_classes: Iterable[str] | None = None):
        self.root = Path(root) if root is not None else default_data_dir()
        cub = self.root / "cub100"
        id_to_class = {int(i): name for i, name in _read_id_pairs(cub / "classes.txt")}
        all_classes = [id_to_class[i] for i in sorted(id_to_class)]
        exclude_classes = list(exclude_classes or ())
        only_classes = None if only_classes is None else list(only_classes)
        unknown = set(exclude_classes) | set(only_classes or ())
        unknown -= set(all_classes)
        if unknown:
            raise ValueError(f"unknown CUB classes: {sorted(unknown)}")
        self.classes = _class_filter(all_classes, exclude_classes, only_classes)
        keep = set(self.classes)
        paths = {int(i): p for i, p in _read_id_pairs(cub / "images.txt")}
        labels = {int(i): int(c) for i, c in _read_id_pairs(cub / "image_class_labels.txt")}
        is_train = {int(i): s == CUB_TRAIN_FLAG
                    for i, s in _read_id_pairs(cub / "train_test_split.txt")}
        self.images: list[CubImage] = []
        for image_id in sorted(paths):
            name = id_to_class[labels[image_id]]
            if name in keep:
                self.images.append(CubImage(image_id, name, f"cub100/images/{paths[image_id]}",
                                            is_train[image_id]))
        self._by_class: dict[str, list[CubImage]] = defaultdict(list)
        for image in self.images:
            self._by_class[image.class_name].append(image)

    def split(self, split: str | None) -> list[CubImage]:
        """Images of the `train` or `test` split (all images for None)."""
        if split is None:
            return list(self.images)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        want = split == "train"
        return [im for im in self.images if im.is_train == want]

    def images_of(self, class_name: str, split: str | None = None) -> list[CubImage]:
        """Images of one class, optionally of one split."""
        images = self._by_class.get(class_name, [])
        if split is None:
            return list(images)
        want = split == "train"
        return [im for im in images if im.is_train == want]

    def __len__(self) -> int:
        return len(self.images)


# --------------------------------------------------------------------------------------------
# Class attribute tables
# --------------------------------------------------------------------------------------------

# AwA2 predicates grouped by what they describe (only these groups are used for difference texts;
# behaviour and habitat predicates are not visible in a photo and stay in no group).
AWA2_GROUPS: dict[str, tuple[str, ...]] = {
    "size": ("big", "small"),
    "colour": ("black", "white", "blue", "brown", "gray", "orange", "red", "yellow"),
    "pattern": ("patches", "spots", "stripes"),
    "coat": ("furry", "hairless", "toughskin"),
    "build": ("bulbous", "lean"),
    "body parts": ("flippers", "hands", "hooves", "pads", "paws", "longleg", "longneck", "tail",
                   "horns", "claws", "tusks"),
}


class AttributeTable:
    """Class x attribute percentages (0-100); NaN where unknown.

    CUB: `has_part::value` columns for all 200 classes, grouped by the part before `::`
    (`has_size`, `has_crown_color`, ...). AwA2: 85 predicates for 50 animals, grouped as in
    `AWA2_GROUPS`.
    """

    def __init__(self, kind: str, classes: list[str], attributes: list[str], values: np.ndarray,
                 groups: dict[str, list[str]]):
        if values.shape != (len(classes), len(attributes)):
            raise ValueError("values must be classes x attributes")
        self.kind = kind
        self.classes = list(classes)
        self.attributes = list(attributes)
        self.values = values.astype(np.float64)
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        self._attr_index = {a: i for i, a in enumerate(self.attributes)}
        self._groups = {g: list(a) for g, a in groups.items()}

    @staticmethod
    def _read_tsv(path: Path, name_column: int) -> tuple[list[str], list[str], np.ndarray]:
        """(class names, attribute names, values) of a class x attribute TSV with a header row."""
        with open(path, newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader)
            rows = [row for row in reader if row]
        first = name_column + 1
        values = np.array([[float(v) for v in row[first:]] for row in rows])
        return [row[name_column] for row in rows], header[first:], values

    @classmethod
    def from_cub(cls, root: str | Path | None = None) -> AttributeTable:
        """`cub100/class_attribute_percent.tsv`: all 200 CUB classes."""
        root = Path(root) if root is not None else default_data_dir()
        classes, attributes, values = cls._read_tsv(root / "cub100" / "class_attribute_percent.tsv", 1)
        groups: dict[str, list[str]] = {}
        for name in attributes:
            groups.setdefault(name.split("::", 1)[0], []).append(name)
        return cls("cub", classes, attributes, values, groups)

    @classmethod
    def from_awa2(cls, root: str | Path | None = None) -> AttributeTable:
        """`awa2/class_predicate_continuous.tsv`: 50 animals x 85 predicates (-1 -> NaN)."""
        root = Path(root) if root is not None else default_data_dir()
        classes, attributes, values = cls._read_tsv(
            root / "awa2" / "class_predicate_continuous.tsv", 0)
        values[values < 0] = np.nan
        groups = {g: [a for a in attrs if a in attributes] for g, attrs in AWA2_GROUPS.items()}
        return cls("awa2", classes, attributes, values, groups)

    def value(self, class_name: str, attribute: str) -> float:
        """The percentage for one class and attribute (NaN where unknown)."""
        try:
            return float(self.values[self._class_index[class_name], self._attr_index[attribute]])
        except KeyError as err:
            raise KeyError(f"unknown class or attribute: {err.args[0]!r}") from None

    def row(self, class_name: str) -> dict[str, float]:
        """All attributes of one class."""
        i = self._class_index[class_name]
        return dict(zip(self.attributes, self.values[i].tolist()))

    def groups(self) -> dict[str, list[str]]:
        """Attribute group name -> attribute names in that group."""
        return {g: list(a) for g, a in self._groups.items()}

    def has_class(self, class_name: str) -> bool:
        return class_name in self._class_index

    def restrict(self, classes: Iterable[str]) -> AttributeTable:
        """A table of just these classes (in this order)."""
        classes = list(classes)
        rows = [self._class_index[c] for c in classes]
        return AttributeTable(self.kind, classes, self.attributes, self.values[rows], self._groups)


def readable_class_name(name: str) -> str:
    """`Red_winged_Blackbird` -> `Red winged Blackbird`, `grizzly+bear` -> `grizzly bear`."""
    return name.replace("_", " ").replace("+", " ")


# --------------------------------------------------------------------------------------------
# COCO captions
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CocoImage:
    image_id: int
    path: str  # relative to the data root: coco-mini/<split>2017/<file>.jpg
    captions: tuple[str, ...]


COCO_SPLITS = {"train": "train2017", "test": "val2017"}


def load_coco_captions(root: str | Path | None = None, split: str = "train") -> list[CocoImage]:
    """COCO photos with their (five) human captions; `train` = train2017, `test` = val2017."""
    root = Path(root) if root is not None else default_data_dir()
    if split not in COCO_SPLITS:
        raise ValueError(f"split must be one of {sorted(COCO_SPLITS)}, got {split!r}")
    folder = COCO_SPLITS[split]
    data = json.loads((root / "coco-mini" / "annotations" / f"captions_{folder}.json").read_text())
    captions: dict[int, list[str]] = defaultdict(list)
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        captions[ann["image_id"]].append(" ".join(ann["caption"].split()))
    images = []
    for im in sorted(data["images"], key=lambda im: im["id"]):
        if captions.get(im["id"]) and (root / "coco-mini" / folder / im["file_name"]).is_file():
            images.append(CocoImage(im["id"], f"coco-mini/{folder}/{im['file_name']}",
                                    tuple(captions[im["id"]])))
    return images


# --------------------------------------------------------------------------------------------
# Choosing the reserved classes (how training/splits/cub100_reserved.txt was made)
# --------------------------------------------------------------------------------------------

SIZE_ORDER = ("has_size::very_small_(3_-_5_in)", "has_size::small_(5_-_9_in)",
              "has_size::medium_(9_-_16_in)", "has_size::large_(16_-_32_in)",
              "has_size::very_large_(32_-_72_in)")


def size_score(table: AttributeTable, class_name: str) -> float:
    """Ordinal size from the has_size::* distribution: mean of 1 (very small) .. 5 (very large)."""
    weights = np.array([table.value(class_name, a) for a in SIZE_ORDER])
    total = weights.sum()
    if not total > 0:
        return math.nan
    return float((weights * np.arange(1, 6)).sum() / total)


def class_family(class_name: str) -> str:
    """The last word of a CUB class name (`Red_winged_Blackbird` -> `Blackbird`)."""
    return class_name.split("_")[-1]


def choose_reserved_classes(dataset: CubDataset, table: AttributeTable, k: int = 20) -> list[str]:
    """Deterministic, spread-out choice of `k` evaluation classes.

    Each class is a point (size score scaled to 0-100, primary-colour percentages). Greedy
    farthest-point sampling starting from the class with the median size score; at most one class
    per family (last word of the name) while possible. No randomness: the same data gives the
    same list, and the choice covers small and large birds of many colours and families.
    """
    classes = list(dataset.classes)
    colours = [a for a in table.attributes if a.startswith("has_primary_color::")]
    sizes = np.array([size_score(table, c) for c in classes])
    points = np.array([[(s - 1) * 25.0] + [table.value(c, a) for a in colours]
                       for c, s in zip(classes, sizes)])
    order = np.argsort(sizes, kind="stable")
    chosen = [int(order[len(order) // 2])]
    dist = np.linalg.norm(points - points[chosen[0]], axis=1)
    while len(chosen) < k:
        used = {class_family(classes[i]) for i in chosen}
        candidates = [i for i in range(len(classes)) if i not in chosen
                      and class_family(classes[i]) not in used]
        if not candidates:
            candidates = [i for i in range(len(classes)) if i not in chosen]
        best = max(candidates, key=lambda i: (dist[i], -i))
        chosen.append(best)
        dist = np.minimum(dist, np.linalg.norm(points - points[best], axis=1))
    return sorted(classes[i] for i in chosen)
