"""Helpers that treat open_clip models and pcclip models alike (torch only)."""

from __future__ import annotations


def embed_dim(model) -> int:
    """Dimension of the shared embedding space."""
    for attr in ("embed_dim",):
        if isinstance(getattr(model, attr, None), int):
            return getattr(model, attr)
    proj = getattr(model, "text_projection", None)
    if proj is not None:
        return int(proj.shape[-1]) if hasattr(proj, "shape") else int(proj.out_features)
    visual = getattr(model, "visual", None)
    if visual is not None and getattr(visual, "output_dim", None):
        return int(visual.output_dim)
    raise ValueError("cannot tell the embedding dimension of this model")


def text_blocks(model) -> list:
    """The text transformer's layers, first to last, for open_clip CLIP and pcclip models."""
    if hasattr(model, "text") and hasattr(model.text, "blocks"):
        return list(model.text.blocks)
    if hasattr(model, "transformer") and hasattr(model.transformer, "resblocks"):
        return list(model.transformer.resblocks)
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "transformer") and hasattr(text.transformer, "resblocks"):
        return list(text.transformer.resblocks)
    raise ValueError("cannot find the text transformer's layers of this model")


def text_tower_parameters(model) -> list:
    """All parameters of the text side (everything that is not the image tower or logit scale/bias)."""
    visual_ids = {id(p) for p in model.visual.parameters()}
    return [
        p for n, p in model.named_parameters()
        if id(p) not in visual_ids and not n.startswith(("logit_scale", "logit_bias"))
    ]
