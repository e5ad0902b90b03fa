"""Training objectives: the PC-CLIP difference loss and the standard CLIP loss.

PC-CLIP (Sam et al., arXiv 2409.09721, and its code): for a batch of pairs (I1_k, I2_k, T12_k),
the target of the text embedding f(T12_k) is the pair difference
d_k = n(n(g(I1_k)) - n(g(I2_k))); the loss is the symmetric InfoNCE between the normalised texts
and the differences over the batch, with logits `scale * n(f(T)) @ d.T` (scale = 1/temperature).
The standard CLIP loss on single image-caption pairs can be mixed in with a weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Mean of the two cross-entropies of `scale * a @ b.T` (rows a_i match b_i); a, b normalised [N, D]."""
    logits = logit_scale * a @ b.t()
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def pair_difference(image_a: torch.Tensor, image_b: torch.Tensor) -> torch.Tensor:
    """d(a, b) = n(n(a) - n(b)) row-wise (a zero difference stays zero)."""
    return F.normalize(F.normalize(image_a, dim=-1) - F.normalize(image_b, dim=-1), dim=-1)


def pc_clip_loss(
    text: torch.Tensor, image_a: torch.Tensor, image_b: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """PC-CLIP loss: symmetric InfoNCE between n(f(T12)) [N, D] and d(g(I1), g(I2)) [N, D]."""
    return symmetric_info_nce(F.normalize(text, dim=-1), pair_difference(image_a, image_b), logit_scale)


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Standard CLIP loss on image-caption pairs: symmetric InfoNCE between n(g(I)) and n(f(T))."""
    return symmetric_info_nce(F.normalize(image, dim=-1), F.normalize(text, dim=-1), logit_scale)


def attribute_direction_loss(text: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(f(T), direction of T's fact) (`training.attribute_probe`); directions unit [N, D]."""
    return (1 - (F.normalize(text, dim=-1) * directions).sum(-1)).mean()


def combined_loss(
    pc: torch.Tensor | None, clip: torch.Tensor | None, clip_weight: float
) -> torch.Tensor:
    """pc + clip_weight * clip; either term may be absent (base training uses the CLIP term alone)."""
    terms = []
    if pc is not None:
        terms.append(pc)
    if clip is not None:
        terms.append(clip_weight * clip if pc is not None else clip)
    if not terms:
        raise ValueError("no loss term: give pairs, captions or both")
    return sum(terms)
