"""The built-in vocabulary of /v1/explain: attribute-difference sentences about size, colour, pattern, shape.

Each phrase becomes "The first {subject} {phrase} than the second." (e.g. "The first bird is larger
than the second."); both directions of every attribute are present, so an explanation can say
which image has more of it.
"""

from __future__ import annotations

# (more, less) comparative phrase pairs, one attribute each
SIZE = [("is larger", "is smaller"), ("is taller", "is shorter"), ("has a longer tail", "has a shorter tail"),
        ("has a longer beak", "has a shorter beak"), ("has longer legs", "has shorter legs"), ("has longer wings", "has shorter wings")]
COLOURS = ["red", "orange", "yellow", "green", "blue", "brown", "black", "white", "grey"]
PATTERN = [("is more striped", "is less striped"), ("is more spotted", "is less spotted"),
           ("is more colourful", "is less colourful"), ("has more contrasting markings", "has less contrasting markings")]
SHAPE = [("is rounder", "is slimmer"), ("has a more pointed beak", "has a blunter beak"),
         ("has a more curved beak", "has a straighter beak"), ("has a more prominent crest", "has a less prominent crest")]
SCENE = [("is brighter", "is darker"), ("is closer to the camera", "is further from the camera")]


def difference_phrases() -> list[str]:
    """The comparative phrases, both directions of each attribute."""
    pairs = SIZE + [(f"is more {c}", f"is less {c}") for c in COLOURS] + PATTERN + SHAPE + SCENE
    return [phrase for pair in pairs for phrase in pair]


def difference_vocabulary(subject: str = "bird") -> list[str]:
    """The built-in difference sentences for a subject noun."""
    return [f"The first {subject} {phrase} than the second." for phrase in difference_phrases()]
