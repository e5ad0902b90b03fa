"""Training inputs: pair records (the shared JSONL contract) and image-caption sources.

Caption sources (`--captions`, repeatable):
- `PATH.jsonl`: one `{"image": <path relative to the data root>, "caption": str}` per line;
- `coco[:train|test]`: coco-mini photos with their five human captions (train2017 / val2017);
- `cub[:train|test|all]`: CUB photos captioned with their readable class name through templates
  ("a photo of a black footed albatross."); reserved classes are left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

CAPTION_TEMPLATES = ("a photo of a {}.", "a photo of a {}, a type of bird.")


class RecordError(ValueError):
    """A malformed pair or caption input, naming the file and line."""


@dataclass(frozen=True)
class CaptionRecord:
    image: str
    caption: str
    class_name: str | None = None


def class_caption_name(name: str) -> str:
    """'Black_footed_Albatross' -> 'black footed albatross' (how prompts name a class)."""
    from training.data import readable_class_name

    return readable_class_name(name).lower()


def _jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecordError(f"{path}:{lineno}: not JSON ({err})") from err
            if not isinstance(obj, dict):
                raise RecordError(f"{path}:{lineno}: expected an object")
            yield lineno, obj


def read_pairs(path: str | Path, exclude_classes: Iterable[str] = ()) -> list:
    """Pair records (`training.pairs.base.PairRecord`) from a JSONL file; pairs touching an excluded class are dropped."""
    from training.pairs.base import PairRecord

    path = Path(path)
    excluded = set(exclude_classes)
    out = []
    for lineno, obj in _jsonl(path):
        try:
            rec = PairRecord.from_dict(obj)
        except ValueError as err:
            raise RecordError(f"{path}:{lineno}: {err}") from err
        if not isinstance(rec.text, str) or not rec.text.strip():
            raise RecordError(f"{path}:{lineno}: empty text")
        if rec.class_a in excluded or rec.class_b in excluded:
            continue
        out.append(rec)
    return out


def _coco_captions(root: Path, split: str) -> list[CaptionRecord]:
    from training.data import load_coco_captions

    return [CaptionRecord(img.path, caption) for img in load_coco_captions(root, split) for caption in img.captions]


def _cub_captions(root: Path, split: str, excluded: set[str]) -> list[CaptionRecord]:
    from training.data import CubDataset

    cub = CubDataset(root, exclude_classes=sorted(excluded))
    out = []
    for i, img in enumerate(cub.split(None if split == "all" else split)):
        template = CAPTION_TEMPLATES[i % len(CAPTION_TEMPLATES)]
        out.append(CaptionRecord(img.path, template.format(class_caption_name(img.class_name)), img.class_name))
    return out


def read_captions(source: str, root: str | Path, exclude_classes: Iterable[str] = ()) -> list[CaptionRecord]:
    """Image-caption records from a source spec (see the module docstring)."""
    root = Path(root)
    excluded = set(exclude_classes)
    if source == "cub" or source.startswith("cub:"):
        split = source.partition(":")[2] or "train"
        if split not in ("train", "test", "all"):
            raise RecordError(f"{source}: the CUB split is train, test or all")
        return _cub_captions(root, split, excluded)
    if source == "coco" or source.startswith("coco:"):
        split = source.partition(":")[2] or "train"
        return _coco_captions(root, split)
    path = Path(source)
    out = []
    for lineno, obj in _jsonl(path):
        caption = obj.get("caption", obj.get("text"))
        if "image" not in obj or not caption:
            raise RecordError(f"{path}:{lineno}: a caption record needs 'image' and 'caption'")
        if obj.get("class") in excluded:
            continue
        out.append(CaptionRecord(str(obj["image"]), str(caption), obj.get("class")))
    return out
