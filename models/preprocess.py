"""Image preprocessing with Pillow and numpy, identical for the torch and ONNX Runtime backends.

It reproduces open_clip's evaluation transform (Resize of the shorter side with Pillow's
antialiasing filter, CenterCrop with torchvision's rounding, ToTensor, Normalize), so the same
pixels go into a model whether it runs in torch or in an exported bundle.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image

_INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessConfig:
    """How an RGB image becomes a normalised CHW float32 array."""

    image_size: tuple[int, int] = (224, 224)  # (height, width)
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # "shortest" (resize + centre crop) or "squash"
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        size = self.image_size
        if isinstance(size, int):
            object.__setattr__(self, "image_size", (size, size))
        else:
            object.__setattr__(self, "image_size", tuple(int(s) for s in size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}")
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"unsupported resize_mode {self.resize_mode!r}")

    def to_dict(self) -> dict:
        """JSON-serialisable form (used in bundle manifests)."""
        d = asdict(self)
        d.pop("extra")
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @classmethod
    def from_open_clip(cls, cfg: dict) -> "PreprocessConfig":
        """From an open_clip model's `visual.preprocess_cfg`."""
        return cls(
            image_size=cfg.get("size", 224),
            mean=cfg.get("mean", OPENAI_MEAN),
            std=cfg.get("std", OPENAI_STD),
            interpolation=cfg.get("interpolation", "bicubic"),
            resize_mode=cfg.get("resize_mode", "shortest"),
        )


def _resize_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    target_h, target_w = cfg.image_size
    resample = _INTERPOLATIONS[cfg.interpolation]
    if cfg.resize_mode == "squash":
        return img.resize((target_w, target_h), resample)
    w, h = img.size
    size = min(target_h, target_w) if target_h != target_w else target_h
    # torchvision.transforms.Resize(int): the shorter side becomes `size`, the longer is truncated.
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample)
    # torchvision.transforms.CenterCrop: pad (with zeros) if needed, then crop with round().
    w, h = img.size
    if w < target_w or h < target_h:
        canvas = Image.new("RGB", (max(w, target_w), max(h, target_h)), (0, 0, 0))
        canvas.paste(img, ((max(w, target_w) - w) // 2, (max(h, target_h) - h) // 2))
        img = canvas
        w, h = img.size
    top = int(round((h - target_h) / 2.0))
    left = int(round((w - target_w) / 2.0))
    return img.crop((left, top, left + target_w, top + target_h))


@functools.lru_cache(maxsize=16)
def _normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[3, 256] float32: channel c's value for byte v, `(v / 255 - mean[c]) / std[c]` in float32.

    The same float32 operations as ToTensor + Normalize, done once per possible byte, so looking
    pixels up in it gives bit-identical results at a fraction of the arithmetic.
    """
    values = np.arange(256, dtype=np.float32) / np.float32(255.0)
    mean_ = np.asarray(mean, dtype=np.float32)[:, None]
    std_ = np.asarray(std, dtype=np.float32)[:, None]
    table = (values[None, :] - mean_) / std_
    table.setflags(write=False)
    return table


def normalise(pixels: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 [N, H, W, 3] -> normalised float32 [N, 3, H, W] (one table lookup per channel)."""
    table = _normalise_table(cfg.mean, cfg.std)
    chw = pixels.transpose(0, 3, 1, 2)
    out = np.empty(chw.shape, dtype=np.float32)
    for c in range(3):
        out[:, c] = table[c][chw[:, c]]
    return out


def preprocess_image(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """One RGB image -> float32 array [3, H, W], normalised."""
    return preprocess_images([img], cfg)[0]


def preprocess_images(images: Sequence[Image.Image], cfg: PreprocessConfig) -> np.ndarray:
    """RGB images -> float32 batch [N, 3, H, W]: resize and crop each, then normalise them together."""
    h, w = cfg.image_size
    if len(images) == 0:
        return np.zeros((0, 3, h, w), dtype=np.float32)
    crops = np.stack([np.asarray(_resize_crop(im if im.mode == "RGB" else im.convert("RGB"), cfg)) for im in images])
    return normalise(crops, cfg)
