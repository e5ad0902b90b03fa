"""Which parts of a CLIP-like model train, and how a frozen part's outputs are cached.

Part names (`--train`): `text-transformer` (the text transformer's layers: what the official
PC-CLIP code trains, `model.transformer` of an open_clip CLIP), `text` (the whole text tower:
transformer, embeddings, head), `text-last:N` (the last N text transformer layers), `text-head`,
`image-head`, `logit-scale`.
They work for pcclip models and open_clip CLIPs alike.

A tower with a frozen trunk is split into `features` (frozen, computed once and cached) and
`head` (trainable, run every step): with a frozen image tower the features are the image
embeddings and the head is the identity; with a trainable image head they are the pooled
trunk features and the head is the projection.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from models.torch_utils import text_blocks, text_tower_parameters

PART_NAMES = ("text-transformer", "text", "text-last:N", "text-head", "image-head", "logit-scale")


def parse_parts(spec: str | list[str]) -> list[str]:
    """'text-head,image-head' -> ['text-head', 'image-head'] (validated)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    parts = [p.strip() for p in items if p.strip()]
    for p in parts:
        name, _, n = p.partition(":")
        if name == "text-last":
            if not n.isdigit() or int(n) < 1:
                raise ValueError(f"{p!r}: text-last needs a layer count, e.g. text-last:2")
        elif p not in PART_NAMES:
            raise ValueError(f"unknown part {p!r}; known: {', '.join(PART_NAMES)}")
    if not parts:
        raise ValueError("nothing to train: name at least one part")
    return parts


def _text_head_params(model) -> list[nn.Parameter]:
    text = getattr(model, "text", None)
    if text is not None and isinstance(getattr(text, "head", None), nn.Module):  # pcclip
        return list(text.head.parameters())
    if isinstance(getattr(model, "text_projection", None), nn.Parameter):  # open_clip CLIP
        return [model.text_projection]
    if isinstance(getattr(model, "text_projection", None), nn.Module):
        return list(model.text_projection.parameters())
    for attr in ("proj", "text_projection"):  # open_clip CustomTextCLIP towers
        head = getattr(text, attr, None) if text is not None else None
        if isinstance(head, nn.Parameter):
            return [head]
        if isinstance(head, nn.Module):
            return list(head.parameters())
    raise ValueError("cannot find the text head (projection) of this model")


def _image_head_params(model) -> list[nn.Parameter]:
    visual = model.visual
    if isinstance(getattr(visual, "head", None), nn.Module) and hasattr(visual, "features"):  # pcclip
        concepts = [visual.concepts.embeddings] if getattr(visual, "concepts", None) is not None else []
        return list(visual.head.parameters()) + concepts
    if isinstance(getattr(visual, "proj", None), nn.Parameter):  # open_clip VisionTransformer
        return [visual.proj]
    raise ValueError("cannot find the image head (projection) of this model")


def part_parameters(model, part: str) -> list[nn.Parameter]:
    """The parameters a part name stands for."""
    name, _, n = part.partition(":")
    if name == "text":
        return text_tower_parameters(model)
    if name == "text-transformer":
        return [p for block in text_blocks(model) for p in block.parameters()]
    if name == "text-last":
        return [p for block in text_blocks(model)[-int(n):] for p in block.parameters()]
    if name == "text-head":
        return _text_head_params(model)
    if name == "image-head":
        return _image_head_params(model)
    if name == "logit-scale":
        return [model.logit_scale]
    raise ValueError(f"unknown part {part!r}")


def set_trainable(model, parts: list[str]) -> list[str]:
    """Freeze everything but `parts`; returns the names of the trainable parameters (sorted)."""
    for p in model.parameters():
        p.requires_grad = False
    for part in parts:
        for p in part_parameters(model, part):
            p.requires_grad = True
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def trains_text_trunk(parts: list[str]) -> bool:
    """True when a part beyond the text head trains (the text trunk must run every step)."""
    return any(p in ("text", "text-transformer") or p.startswith("text-last") for p in parts)


def set_train_mode(model, parts: list[str]) -> None:
    """Dropout and norm statistics behave as in training only in a text transformer that trains."""
    model.eval()
    if trains_text_trunk(parts):
        text = getattr(model, "text", None)
        if isinstance(text, nn.Module):
            text.train()
        for attr in ("transformer", "token_embedding", "ln_final"):
            module = getattr(model, attr, None)
            if isinstance(module, nn.Module):
                module.train()


@dataclass
class TowerSplit:
    """features(x) is frozen (cacheable); head(features) is differentiable. `level` names the features."""

    level: str
    features: Callable[[torch.Tensor], torch.Tensor]
    head: Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def _without_image_proj(visual):
    proj = visual.proj
    visual.proj = None
    try:
        yield
    finally:
        visual.proj = proj


def image_split(model, trains_image_head: bool) -> TowerSplit:
    """How image features are cached and turned into embeddings during training."""
    if not trains_image_head:
        return TowerSplit("embedding", lambda pixels: model.encode_image(pixels), lambda x: x)
    visual = model.visual
    if hasattr(visual, "features") and isinstance(getattr(visual, "head", None), nn.Module):
        return TowerSplit("trunk", visual.features, visual.embed)
    if isinstance(getattr(visual, "proj", None), nn.Parameter):

        def features(pixels):
            with _without_image_proj(visual):
                return visual(pixels)

        return TowerSplit("pre-proj", features, lambda x: x @ visual.proj)
    raise ValueError("this model's image head cannot be trained on cached features")


def text_split(model, parts: list[str]) -> TowerSplit | None:
    """A split of the text tower when only its head trains (pcclip models), else None (run it whole)."""
    text = getattr(model, "text", None)
    if trains_text_trunk(parts) or not (hasattr(text, "features") and isinstance(getattr(text, "head", None), nn.Module)):
        return None
    return TowerSplit("trunk", text.features, text.head)


def check_image_trunk_frozen(model) -> None:
    """The trainer caches image features: refuse a configuration that would train the image trunk."""
    head_ids = set()
    try:
        head_ids = {id(p) for p in _image_head_params(model)}
    except ValueError:
        pass
    trunk = [n for n, p in model.visual.named_parameters() if p.requires_grad and id(p) not in head_ids]
    if trunk:
        raise ValueError(f"the image trunk must stay frozen (its features are cached); trainable: {trunk[:3]}")
