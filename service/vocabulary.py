"""The built-in vocabulary of /v1/explain: difference sentences for everyday photos.

Attributes come in groups (size, colour, brightness, texture and pattern, count and crowdedness,
distance, shape, age and wear), each as a (more, less) pair of phrases, so an explanation can
say which image has more of it. Two forms:

- subject-neutral (the default): "The first image shows something larger than the second.";
- about a named subject (`subject` in the request, or `PCCLIP_EXPLAIN_SUBJECT`):
  "The first animal is larger than the second."

Image-level attributes (brightness, count, crowdedness, distance) read the same in both forms.
"""

from __future__ import annotations

COLOURS = ("red", "orange", "yellow", "green", "blue", "brown", "black", "white", "grey", "pink")

# group -> [(more, less)] in the subject form: "The first {subject} {phrase} than the second."
SUBJECT_PHRASES: dict[str, list[tuple[str, str]]] = {
    "size": [("is larger", "is smaller"), ("is taller", "is shorter"), ("is longer", "is more compact"),
             ("has longer legs", "has shorter legs"), ("has a longer tail", "has a shorter tail")],
    "colour": [(f"is more {c}", f"is less {c}") for c in COLOURS] + [("is more colourful", "is less colourful")],
    "texture": [("is more striped", "is less striped"), ("is more spotted", "is less spotted"),
                ("is furrier", "is less furry"), ("is shinier", "is duller"), ("is smoother", "is rougher")],
    "shape": [("is rounder", "is more angular"), ("is bulkier", "is slimmer"), ("is more pointed", "is blunter")],
    "age": [("is older", "is newer"), ("is more worn", "is less worn"), ("is older-looking", "is younger-looking")],
}
# the same attributes, subject-neutral: "The first image {phrase} than the second."
NEUTRAL_PHRASES: dict[str, list[tuple[str, str]]] = {
    "size": [("shows something larger", "shows something smaller"), ("shows something taller", "shows something shorter"),
             ("shows something longer", "shows something more compact")],
    "colour": [(f"is more {c}", f"is less {c}") for c in COLOURS] + [("is more colourful", "is less colourful")],
    "texture": [("shows more stripes", "shows fewer stripes"), ("shows more spots", "shows fewer spots"),
                ("shows something furrier", "shows something less furry"),
                ("shows something shinier", "shows something duller")],
    "shape": [("shows something rounder", "shows something more angular"),
              ("shows something bulkier", "shows something slimmer")],
    "age": [("shows something older", "shows something newer"), ("shows something more worn", "shows something less worn")],
}
# image-level attributes, the same sentence in both forms
IMAGE_PHRASES: dict[str, list[tuple[str, str]]] = {
    "brightness": [("is brighter", "is darker")],
    "count": [("shows more things", "shows fewer things"), ("is more crowded", "is emptier")],
    "distance": [("shows its subject closer up", "shows its subject from further away")],
}
GROUPS = ("size", "colour", "brightness", "texture", "count", "distance", "shape", "age")


def difference_vocabulary(subject: str | None = None) -> list[str]:
    """The built-in difference sentences, both directions of every attribute: about `subject`
    ("The first animal is larger than the second.") or, without one, subject-neutral ("The first
    image shows something larger than the second.")."""
    subject = (subject or "").strip()
    per_subject = SUBJECT_PHRASES if subject else NEUTRAL_PHRASES
    noun = subject or "image"
    out = []
    for group in GROUPS:
        for more, less in per_subject.get(group, []):
            out += [f"The first {noun} {more} than the second.", f"The first {noun} {less} than the second."]
        for more, less in IMAGE_PHRASES.get(group, []):
            out += [f"The first image {more} than the second.", f"The first image {less} than the second."]
    return out
