"""No-LLM baseline: a difference text assembled from the two images' captions."""

from __future__ import annotations

import random
from collections.abc import Iterator

from training.pairs.base import CaptionedPairSource, PairRecord, PairWriter

CAPTION_TEMPLATES = (
    "Unlike an image of {b}, the first image shows {a}.",
    "The first image shows {a}, while the second shows {b}.",
    "The first image is of {a} rather than {b}.",
    "The second image shows {b}, whereas the first shows {a}.",
    "Compared with an image of {b}, the first image shows {a}.",
)


def caption_phrase(caption: str) -> str:
    """A caption as a noun phrase inside a sentence: trimmed, no final period, lower-case start."""
    text = " ".join(caption.split()).rstrip(" .")
    if text and not (len(text) > 1 and text[1].isupper()):  # keep acronyms ("TV")
        text = text[0].lower() + text[1:]
    return text


def caption_difference(caption_a: str, caption_b: str, template: int = 0) -> str:
    """`Unlike an image of <caption b>, the first image shows <caption a>.` and variants."""
    return CAPTION_TEMPLATES[template].format(a=caption_phrase(caption_a), b=caption_phrase(caption_b))


class CaptionPairWriter(PairWriter):
    """Pairs from a captioned source; the text contrasts the two captions (no LLM)."""

    name = "captions"

    def __init__(self, source: CaptionedPairSource):
        self.source = source

    def pairs(self, n: int, rng: random.Random) -> Iterator[PairRecord]:
        for _ in range(n):
            pair = self.source.sample(rng)
            template = rng.randrange(len(CAPTION_TEMPLATES))
            yield PairRecord(pair.image_a, pair.image_b,
                             caption_difference(pair.caption_a, pair.caption_b, template), self.name,
                             class_a=pair.class_a, class_b=pair.class_b, caption_a=pair.caption_a,
                             caption_b=pair.caption_b, source={"template": template})
