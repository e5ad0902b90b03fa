"""Everyday photos for the default model: the ImageNet-1k sample photos, AwA2 animals, COCO categories.

- `ImageNetClasses`: the 1,000 classes of `imagenet-samples/classes.tsv` (the image tower's
  classifier order) with names, WordNet lemmas, parents, glosses and the one sample photo each.
- `training/splits/imagenet_heldout.txt`: the 200 ImageNet classes no training sees (neither
  their names nor their photos); `choose_imagenet_heldout` makes it (see `splits/README.md`).
- `training/splits/awa2_imagenet.tsv`: which ImageNet classes show which AwA2 animal;
  `training/splits/awa2_heldout.txt`: the AwA2 animals held out of every training (their
  ImageNet classes are in the held-out ImageNet split), photos for the animal evaluation.
- `coco_category_photos`: COCO photos with their annotated category names (zero-shot with the
  80 COCO names).
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from training.data import SPLITS_DIR, default_data_dir, load_class_split, load_coco_captions

IMAGENET_HELDOUT_SPLIT = SPLITS_DIR / "imagenet_heldout.txt"
AWA2_IMAGENET = SPLITS_DIR / "awa2_imagenet.tsv"
AWA2_HELDOUT_SPLIT = SPLITS_DIR / "awa2_heldout.txt"
N_IMAGENET_HELDOUT = 200
N_AWA2_HELDOUT = 12
SPLIT_SEED = 13

# Class templates for everyday photos (zero-shot prompts and base-training captions).
EVERYDAY_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a bright photo of a {}.",
    "a cropped photo of a {}.",
    "a good photo of a {}.",
)


@dataclass(frozen=True)
class ImageNetClass:
    index: int  # the classifier's output index
    synset: str
    label: str
    lemmas: tuple[str, ...]
    parent: str
    gloss: str
    image: str  # relative to the data root: imagenet-samples/images/<file>


class ImageNetClasses:
    """The 1,000 ImageNet-1k classes with their readable names and sample photos."""

    def __init__(self, root: str | Path | None = None):
        root = Path(root) if root is not None else default_data_dir()
        self.root = root
        with open(root / "imagenet-samples" / "classes.tsv", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        self.classes = [
            ImageNetClass(int(r["class_idx"]), r["synset"], r["label"],
                          tuple(x.strip() for x in r["wordnet_lemmas"].split(";") if x.strip()),
                          r["wordnet_parent"], r["wordnet_gloss"], f"imagenet-samples/images/{r['image']}")
            for r in rows
        ]
        if [c.index for c in self.classes] != list(range(len(self.classes))):
            raise ValueError("classes.tsv is not in the classifier's order")

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, index: int) -> ImageNetClass:
        return self.classes[index]


def load_imagenet_heldout(path: str | Path = IMAGENET_HELDOUT_SPLIT) -> list[int]:
    """Held-out ImageNet class indices (lines `<index>\\t<label>`)."""
    return [int(line.split("\t")[0]) for line in load_class_split(path)]


def load_awa2_imagenet(path: str | Path = AWA2_IMAGENET) -> dict[str, list[int]]:
    """AwA2 animal -> the ImageNet class indices whose photos show it."""
    out: dict[str, list[int]] = {}
    for line in load_class_split(path):
        animal, indices = line.split("\t")
        out[animal] = [int(i) for i in indices.split(",")]
    return out


def load_awa2_heldout(path: str | Path = AWA2_HELDOUT_SPLIT) -> list[str]:
    """AwA2 animals held out of every training (AwA2 spelling, e.g. `killer+whale`)."""
    return load_class_split(path)


def _words(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()).strip() + " "


def seen_vocabulary(root: str | Path | None = None) -> str:
    """Every training text that is not an ImageNet name: COCO train2017 captions and CUB class names
    (one lower-case string of words, padded with spaces for whole-word look-ups)."""
    from training.data import CubDataset

    root = Path(root) if root is not None else default_data_dir()
    texts = [c for im in load_coco_captions(root, "train") for c in im.captions]
    texts += [name.replace("_", " ") for name in CubDataset(root).classes]
    return " ".join(_words(t) for t in texts)


def choose_imagenet_heldout(root: str | Path | None = None, seed: int = SPLIT_SEED) -> tuple[list[int], list[str]]:
    """(held-out ImageNet classes, held-out AwA2 animals), seeded and reproducible.

    A class may be held out only when neither its label nor any of its lemmas occurs as whole
    words in another training text (COCO train2017 captions, CUB class names), so that no
    training sees its name. First `N_AWA2_HELDOUT` AwA2 animals are drawn among those whose every
    ImageNet class may be held out (their classes are held out); the rest of the 200 are drawn
    from the remaining candidates.
    """
    classes = ImageNetClasses(root)
    vocab = seen_vocabulary(root)
    candidates = [c.index for c in classes.classes
                  if all(_words(n) not in vocab for n in (c.label,) + c.lemmas)]
    rng = random.Random(seed)
    awa2 = load_awa2_imagenet()
    animal_pool = sorted(a for a, idx in awa2.items() if all(i in candidates for i in idx))
    animals = sorted(rng.sample(animal_pool, N_AWA2_HELDOUT))
    forced = sorted({i for a in animals for i in awa2[a]})
    rest = sorted(set(candidates) - set(forced) - {i for idx in awa2.values() for i in idx})
    held = sorted(forced + rng.sample(rest, N_IMAGENET_HELDOUT - len(forced)))
    return held, animals


def write_splits(root: str | Path | None = None) -> None:
    """Write `imagenet_heldout.txt` and `awa2_heldout.txt` (what `choose_imagenet_heldout` gives)."""
    classes = ImageNetClasses(root)
    held, animals = choose_imagenet_heldout(root)
    head = "# written by: python -m training.everyday (see README.md)\n"
    IMAGENET_HELDOUT_SPLIT.write_text(head + "".join(f"{i}\t{classes[i].label}\n" for i in held))
    AWA2_HELDOUT_SPLIT.write_text(head + "".join(f"{a}\n" for a in animals))


def animal_name(awa2_class: str) -> str:
    """AwA2's spelling ("grizzly+bear") as words ("grizzly bear")."""
    return awa2_class.replace("+", " ")


def coco_category_photos(root: str | Path | None = None, split: str = "test") -> list[tuple[str, list[str]]]:
    """(photo path, annotated COCO category names) of the photos that have instance annotations;
    `test` = val2017 (never trained on), `train` = train2017."""
    root = Path(root) if root is not None else default_data_dir()
    name = {"train": "train2017", "test": "val2017"}[split]
    data = json.loads((root / "coco-mini" / "annotations" / f"instances_{name}.json").read_text())
    cats = {c["id"]: c["name"] for c in data["categories"]}
    files = {im["id"]: im["file_name"] for im in data["images"]}
    per: dict[int, set[str]] = defaultdict(set)
    for a in data["annotations"]:
        per[a["image_id"]].add(cats[a["category_id"]])
    return [(f"coco-mini/{name}/{files[i]}", sorted(per[i])) for i in sorted(per) if i in files]


def coco_category_names(root: str | Path | None = None) -> list[str]:
    """The 80 COCO category names, in id order."""
    root = Path(root) if root is not None else default_data_dir()
    data = json.loads((root / "coco-mini" / "annotations" / "instances_val2017.json").read_text())
    return [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]


if __name__ == "__main__":
    write_splits()
    print(IMAGENET_HELDOUT_SPLIT.read_text().count("\n") - 1, "held-out ImageNet classes;",
          AWA2_HELDOUT_SPLIT.read_text().count("\n") - 1, "held-out AwA2 animals")
