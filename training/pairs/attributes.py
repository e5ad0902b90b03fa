"""Difference texts from class attribute tables (CUB, AwA2): true sentences, varied phrasings.

`AttributeWriter(table).describe(a, b)` lists how class `a` differs from class `b`, strongest
difference first, each as a `Difference` whose sentence never contradicts the table:

- size: an ordinal score (1 very small .. 5 very large, the mean of the `has_size::*`
  distribution; AwA2: `big - small`), claimed only when the scores differ by a clear margin;
- colours of body parts: each bird's *dominant* (most-annotated) colour for the part, claimed only
  when the two dominant colours differ and each bird has its colour clearly more than the other;
- patterns (striped breast, crest, eye ring, AwA2 stripes/fur/...): one animal clearly has it as its
  dominant pattern (or, for multi-label head patterns, often), the other clearly does not;
- shapes (bill length as an ordinal score; dominant bill, wing, tail and body shape).

Thresholds are in `Margins`. Every Difference says which table columns it rests on
(`attributes`), the measured values for the two classes (`value_a`, `value_b`) and `direction`
(+1: the sentence says `a` has more of `attributes[0]`, or is larger; -1: less), so a test or an
evaluation can check it against the table.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from training.data import SIZE_ORDER, AttributeTable, CubDataset, size_score
from training.pairs.base import CubPairSampler, PairRecord, PairWriter, with_article

# ---------------------------------------------------------------------------------------------
# The result type
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """One true statement of how class a differs from class b."""

    text: str
    group: str                   # size | colour | pattern | shape (AwA2 also: coat, build, body parts)
    attributes: tuple[str, ...]  # table columns the claim rests on; the measure is about attributes[0]
    value_a: float               # the measure for a: ordinal score (size, bill length) or percent of attributes[0]
    value_b: float
    direction: int               # +1: a has more of it than b (or is larger/longer); -1: less
    kind: str = ""               # finer: "size", "crown colour", "breast pattern", "bill shape", ...
    strength: float = 0.0        # 0..1, how clear the difference is (ranking)
    template: int = 0            # index of the phrasing used
    other_attribute: str | None = None  # for "X vs Y" claims: b's dominant value (attributes[1])

    def source(self) -> dict:
        """Provenance for a pair record."""
        out = {"group": self.group, "kind": self.kind, "attributes": list(self.attributes),
               "value_a": round(self.value_a, 2), "value_b": round(self.value_b, 2),
               "direction": self.direction, "template": self.template}
        if self.other_attribute is not None:
            out["other_attribute"] = self.other_attribute
        return out


class NoDifference(ValueError):
    """The table shows no clear difference between the two classes."""


@dataclass(frozen=True)
class Margins:
    """How clear a difference must be before the writer states it."""

    size: float = 0.5            # ordinal size score (1..5)
    bill_length: float = 0.5     # ordinal bill length score (1..3)
    dominant_min: float = 25.0   # the named colour/shape must have at least this percentage
    contrast: float = 20.0       # each class has its named value at least this much more than the other
    pattern: float = 30.0        # pattern presence difference (percentage points)
    present_min: float = 40.0    # a multi-label pattern counts as present from this percentage
    absent_max: float = 15.0     # ... and as absent up to this one
    awa2_size: float = 30.0      # AwA2 (big - small) score, -100..100
    awa2_present: float = 50.0   # AwA2 predicate strength counted as present
    awa2_absent: float = 20.0


# ---------------------------------------------------------------------------------------------
# Phrasings. Placeholders: {n} noun, {A}/{B} phrases for a/b. Index 0 is the canonical one (hints).
# ---------------------------------------------------------------------------------------------

MORE_TEMPLATES = (  # comparative: a has more (larger, longer); {adj} comparative, {opp} its opposite
    "The first {n} is {adj} than the second.",
    "The first {n} is {adj} than the second one.",
    "The second {n} is {opp} than the first.",
    "Compared with the second {n}, the first is {adj}.",
    "Compared to the first {n}, the second one is {opp}.",
)
HAS_MORE_TEMPLATES = (  # "has a longer bill"
    "The first {n} has a {adj} {part} than the second.",
    "The first {n}'s {part} is {adj} than the second's.",
    "The second {n} has a {opp} {part} than the first.",
    "Compared with the second {n}, the first has a {adj} {part}.",
)
CONTRAST_TEMPLATES = (  # "{A}" = "a red crown", "{B}" = "a black crown"
    "The first {n} has {A}, while the second has {B}.",
    "The first {n} has {A}, whereas the second {n} has {B}.",
    "The second {n} has {B}, while the first has {A}.",
    "Unlike the second {n}, which has {B}, the first {n} has {A}.",
    "The first {n} has {A} rather than {B}.",
)
CONTRAST_IS_TEMPLATES = (  # "{A}" = "red" for "The first bird is mostly red"
    "The first {n} is mostly {A}, while the second is mostly {B}.",
    "The first {n} is mostly {A}, whereas the second {n} is mostly {B}.",
    "The second {n} is mostly {B}, while the first is mostly {A}.",
    "Unlike the mostly {B} second {n}, the first {n} is mostly {A}.",
)
CONTRAST_SHAPE_TEMPLATES = (  # "{A}" = "a duck"
    "The first {n} is shaped like {A}, while the second is shaped like {B}.",
    "The second {n} is shaped like {B}, whereas the first is shaped like {A}.",
    "Unlike the second {n}, which is shaped like {B}, the first is shaped like {A}.",
)
PRESENT_A_TEMPLATES = (  # a has it, b does not; {A} verb phrase, {B} its negation
    "Unlike the second, the first {n} {A}.",
    "The first {n} {A}, unlike the second.",
    "The first {n} {A}, while the second {B}.",
    "The second {n} {B}, but the first {A}.",
)
PRESENT_B_TEMPLATES = (  # b has it, a does not
    "Unlike the first, the second {n} {A}.",
    "The second {n} {A}, unlike the first.",
    "The first {n} {B}, while the second {A}.",
    "The first {n} {B}, unlike the second.",
)


# ---------------------------------------------------------------------------------------------
# CUB vocabulary
# ---------------------------------------------------------------------------------------------

CUB_COLOUR_PARTS = {  # group -> (part name, plural?)
    "has_crown_color": ("crown", False), "has_forehead_color": ("forehead", False),
    "has_nape_color": ("nape", False), "has_throat_color": ("throat", False),
    "has_breast_color": ("breast", False), "has_belly_color": ("belly", False),
    "has_back_color": ("back", False), "has_bill_color": ("bill", False),
    "has_upper_tail_color": ("upper tail", False), "has_under_tail_color": ("under tail", False),
    "has_wing_color": ("wings", True), "has_leg_color": ("legs", True),
    "has_eye_color": ("eyes", True), "has_upperparts_color": ("upperparts", True),
    "has_underparts_color": ("underparts", True),
}
CUB_PART_PATTERNS = {"has_breast_pattern": "breast", "has_belly_pattern": "belly",
                     "has_back_pattern": "back", "has_tail_pattern": "tail",
                     "has_wing_pattern": "wings"}
CUB_PATTERN_WORDS = {"spotted": "spotted", "striped": "striped"}
CUB_HEAD_PATTERNS = {  # value -> noun phrase
    "crested": "a crest", "masked": "a mask", "eyebrow": "an eyebrow stripe",
    "eyering": "an eye ring", "capped": "a cap", "malar": "a malar stripe",
    "eyeline": "an eye line", "striped": "a striped head", "spotted": "a spotted head",
}
CUB_SHAPE_GROUPS = {  # group -> (value -> noun phrase, kind)
    "has_bill_shape": ({
        "curved_(up_or_down)": "a curved bill", "dagger": "a dagger-shaped bill",
        "hooked": "a hooked bill", "needle": "a needle-like bill",
        "hooked_seabird": "a hooked seabird bill", "spatulate": "a spoon-shaped bill",
        "all-purpose": "an all-purpose bill", "cone": "a cone-shaped bill"}, "bill shape"),
    "has_wing_shape": ({
        "rounded-wings": "rounded wings", "pointed-wings": "pointed wings",
        "broad-wings": "broad wings", "tapered-wings": "tapered wings",
        "long-wings": "long wings"}, "wing shape"),
    "has_tail_shape": ({
        "forked_tail": "a forked tail", "rounded_tail": "a rounded tail",
        "notched_tail": "a notched tail", "fan-shaped_tail": "a fan-shaped tail",
        "pointed_tail": "a pointed tail", "squared_tail": "a squared tail"}, "tail shape"),
}
CUB_BODY_SHAPES = {
    "upright-perching_water-like": "an upright water bird", "chicken-like-marsh": "a marsh hen",
    "long-legged-like": "a long-legged wader", "duck-like": "a duck", "owl-like": "an owl",
    "gull-like": "a gull", "hummingbird-like": "a hummingbird", "pigeon-like": "a pigeon",
    "tree-clinging-like": "a tree-clinging bird", "hawk-like": "a hawk",
    "sandpiper-like": "a sandpiper", "upland-ground-like": "an upland ground bird",
    "swallow-like": "a swallow", "perching-like": "a perching bird",
}
BILL_LENGTH_ORDER = ("has_bill_length::shorter_than_head", "has_bill_length::about_the_same_as_head",
                     "has_bill_length::longer_than_head")

# ---------------------------------------------------------------------------------------------
# AwA2 vocabulary: predicate -> (verb phrase, negated verb phrase)
# ---------------------------------------------------------------------------------------------

AWA2_PRESENCE = {
    "patches": ("has patches", "has no patches"), "spots": ("has spots", "has no spots"),
    "stripes": ("has stripes", "has no stripes"), "furry": ("is furry", "is not furry"),
    "hairless": ("is hairless", "is not hairless"),
    "toughskin": ("has tough skin", "does not have tough skin"),
    "bulbous": ("is bulky", "is not bulky"),
    "lean": ("is lean", "is not lean"), "flippers": ("has flippers", "has no flippers"),
    "hands": ("has hands", "has no hands"), "hooves": ("has hooves", "has no hooves"),
    "pads": ("has paw pads", "has no paw pads"), "paws": ("has paws", "has no paws"),
    "longleg": ("has long legs", "does not have long legs"),
    "longneck": ("has a long neck", "does not have a long neck"),
    "tail": ("has a tail", "has no tail"), "horns": ("has horns", "has no horns"),
    "claws": ("has claws", "has no claws"), "tusks": ("has tusks", "has no tusks"),
}


# ---------------------------------------------------------------------------------------------
# The writer
# ---------------------------------------------------------------------------------------------

@dataclass
class _Claim:
    """A difference before it is phrased: templates plus the fields to fill them."""

    templates: tuple[str, ...]
    fill: dict
    group: str
    kind: str
    attributes: tuple[str, ...]
    value_a: float
    value_b: float
    direction: int
    strength: float
    other_attribute: str | None = None
    extra: dict = field(default_factory=dict)


class AttributeWriter:
    """True, varied difference sentences between two classes of an attribute table.

    `noun` names the things compared ("bird" for CUB, "animal" for AwA2; defaults by table kind).
    `seed` fixes the phrasing choices when `describe` is called without an `rng`.
    """

    def __init__(self, table: AttributeTable, noun: str | None = None, seed: int = 0,
                 margins: Margins = Margins()):
        self.table = table
        self.noun = noun or ("animal" if table.kind == "awa2" else "bird")
        self.margins = margins
        self.rng = random.Random(seed)
        self._ranked_cache: dict[tuple[str, str], list[_Claim]] = {}
        self._claims: Callable[[str, str], list[_Claim]] = (
            self._awa2_claims if table.kind == "awa2" else self._cub_claims)

    # -- public ---------------------------------------------------------------------------------

    def describe(self, class_a: str, class_b: str, n: int | None = None,
                 rng: random.Random | None = None) -> list[Difference]:
        """How class a differs from class b: up to `n` Differences (all if None).

        Order: the strongest difference of each attribute group (size, colour, pattern, shape, ...)
        by strength, then the remaining ones by strength, so the first few cover several groups.
        """
        if class_a == class_b:
            return []
        for name in (class_a, class_b):
            if not self.table.has_class(name):
                raise KeyError(f"unknown class {name!r}")
        rng = rng if rng is not None else self.rng
        claims = self._ranked(class_a, class_b)
        if n is not None:
            claims = claims[:n]
        return [self._phrase(c, rng.randrange(len(c.templates))) for c in claims]

    def hint(self, class_a: str, class_b: str) -> str:
        """One sentence (the strongest difference, canonical phrasing) for comparative prompting."""
        claims = self._ranked(class_a, class_b) if class_a != class_b else []
        if not claims:
            raise NoDifference(f"no clear difference between {class_a} and {class_b}")
        return self._phrase(claims[0], 0).text

    def _ranked(self, class_a: str, class_b: str) -> list[_Claim]:
        """The strongest claim of each group (strongest first), then the rest by strength."""
        key = (class_a, class_b)
        if key not in self._ranked_cache:
            self._ranked_cache[key] = self._rank(class_a, class_b)
        return self._ranked_cache[key]

    def _rank(self, class_a: str, class_b: str) -> list[_Claim]:
        claims = sorted(self._claims(class_a, class_b), key=lambda c: (-c.strength, c.kind))
        seen: set[str] = set()
        leaders, rest = [], []
        for c in claims:
            (rest if c.group in seen else leaders).append(c)
            seen.add(c.group)
        return leaders + rest

    def all_phrasings(self, class_a: str, class_b: str) -> list[Difference]:
        """Every phrasing of every difference (tests and inspection)."""
        return [self._phrase(c, i) for c in self._claims(class_a, class_b)
                for i in range(len(c.templates))]

    # -- phrasing -------------------------------------------------------------------------------

    def _phrase(self, claim: _Claim, index: int) -> Difference:
        text = claim.templates[index].format(n=self.noun, **claim.fill)
        text = text[0].upper() + text[1:]
        return Difference(text=text, group=claim.group, attributes=claim.attributes,
                          value_a=claim.value_a, value_b=claim.value_b, direction=claim.direction,
                          kind=claim.kind, strength=round(claim.strength, 4), template=index,
                          other_attribute=claim.other_attribute)

    # -- CUB ------------------------------------------------------------------------------------

    def _cub_claims(self, a: str, b: str) -> list[_Claim]:
        t, m = self.table, self.margins
        groups = t.groups()
        row_a, row_b = t.row(a), t.row(b)
        claims: list[_Claim] = []

        # size: ordinal score from the has_size distribution
        sa, sb = size_score(t, a), size_score(t, b)
        if abs(sa - sb) >= m.size:
            larger = sa > sb
            much = abs(sa - sb) >= 1.5
            adj = ("much " if much else "") + ("larger" if larger else "smaller")
            opp = ("much " if much else "") + ("smaller" if larger else "larger")
            claims.append(_Claim(MORE_TEMPLATES, {"adj": adj, "opp": opp}, "size", "size",
                                 SIZE_ORDER, sa, sb, 1 if larger else -1, min(1.0, abs(sa - sb) / 2)))

        # bill length: ordinal score 1 (shorter than head) .. 3 (longer)
        la, lb = self._ordinal(row_a, BILL_LENGTH_ORDER), self._ordinal(row_b, BILL_LENGTH_ORDER)
        if abs(la - lb) >= m.bill_length:
            longer = la > lb
            claims.append(_Claim(HAS_MORE_TEMPLATES, {
                "adj": "longer" if longer else "shorter", "opp": "shorter" if longer else "longer",
                "part": "bill"}, "shape", "bill length", BILL_LENGTH_ORDER, la, lb,
                1 if longer else -1, min(1.0, abs(la - lb) / 2)))

        # colours: dominant colour of each part
        for group, (part, plural) in CUB_COLOUR_PARTS.items():
            contrast = self._dominant_contrast(row_a, row_b, groups[group])
            if contrast is None:
                continue
            xa, xb, strength = contrast
            ca, cb = xa.split("::")[1], xb.split("::")[1]
            if plural:
                fill = {"A": f"{ca} {part}", "B": f"{cb} {part}"}
            else:
                fill = {"A": with_article(f"{ca} {part}"), "B": with_article(f"{cb} {part}")}
            claims.append(_Claim(CONTRAST_TEMPLATES, fill, "colour", f"{part} colour", (xa, xb),
                                 row_a[xa], row_b[xa], 1, strength, other_attribute=xb))
        contrast = self._dominant_contrast(row_a, row_b, groups["has_primary_color"])
        if contrast is not None:
            xa, xb, strength = contrast
            claims.append(_Claim(CONTRAST_IS_TEMPLATES, {"A": xa.split("::")[1], "B": xb.split("::")[1]},
                                 "colour", "primary colour", (xa, xb), row_a[xa], row_b[xa], 1,
                                 strength, other_attribute=xb))

        # part patterns (spotted / striped), one-sided
        for group, part in CUB_PART_PATTERNS.items():
            best = None
            for value, word in CUB_PATTERN_WORDS.items():
                attr = f"{group}::{value}"
                for side in (1, -1):
                    has, lacks = (row_a, row_b) if side == 1 else (row_b, row_a)
                    if self._dominant(has, groups[group]) == attr and \
                            self._dominant(lacks, groups[group]) != attr and \
                            has[attr] >= m.present_min and has[attr] - lacks[attr] >= m.pattern:
                        np_ = with_article(f"{word} {part}") if part != "wings" else f"{word} {part}"
                        claim = _Claim(PRESENT_A_TEMPLATES if side == 1 else PRESENT_B_TEMPLATES,
                                       {"A": f"has {np_}", "B": f"does not have {np_}"},
                                       "pattern", f"{part} pattern", (attr,), row_a[attr],
                                       row_b[attr], side, (has[attr] - lacks[attr]) / 100)
                        if best is None or claim.strength > best.strength:
                            best = claim
            if best is not None:
                claims.append(best)

        # head patterns: multi-label, presence vs absence
        best = None
        for value, np_ in CUB_HEAD_PATTERNS.items():
            attr = f"has_head_pattern::{value}"
            for side in (1, -1):
                has, lacks = (row_a, row_b) if side == 1 else (row_b, row_a)
                if has[attr] >= m.present_min and lacks[attr] <= m.absent_max and \
                        has[attr] - lacks[attr] >= m.pattern:
                    claim = _Claim(PRESENT_A_TEMPLATES if side == 1 else PRESENT_B_TEMPLATES,
                                   {"A": f"has {np_}", "B": f"does not have {np_}"}, "pattern",
                                   "head pattern", (attr,), row_a[attr], row_b[attr], side,
                                   (has[attr] - lacks[attr]) / 100)
                    if best is None or claim.strength > best.strength:
                        best = claim
        if best is not None:
            claims.append(best)

        # shapes: dominant bill / wing / tail shape, body shape
        for group, (phrases, kind) in CUB_SHAPE_GROUPS.items():
            claim = self._shape_contrast(row_a, row_b, groups[group], phrases, kind,
                                         CONTRAST_TEMPLATES)
            if claim is not None:
                claims.append(claim)
        body = {f"has_shape::{k}": v for k, v in CUB_BODY_SHAPES.items()}
        claim = self._shape_contrast(row_a, row_b, groups["has_shape"],
                                     {k.split("::")[1]: v for k, v in body.items()}, "body shape",
                                     CONTRAST_SHAPE_TEMPLATES)
        if claim is not None:
            claims.append(claim)
        return claims

    def _shape_contrast(self, row_a, row_b, attrs, phrases, kind, templates) -> _Claim | None:
        contrast = self._dominant_contrast(row_a, row_b, attrs)  # over the whole group
        if contrast is None:
            return None
        xa, xb, strength = contrast
        if xa.split("::")[1] not in phrases or xb.split("::")[1] not in phrases:
            return None  # e.g. "specialized" bill: nothing visual to say
        pa, pb = phrases[xa.split("::")[1]], phrases[xb.split("::")[1]]
        if pa == pb:
            return None
        return _Claim(templates, {"A": pa, "B": pb}, "shape", kind, (xa, xb), row_a[xa], row_b[xa],
                      1, strength, other_attribute=xb)

    @staticmethod
    def _ordinal(row: dict, order: tuple[str, ...]) -> float:
        w = np.array([row[x] for x in order])
        return float((w * np.arange(1, len(order) + 1)).sum() / w.sum()) if w.sum() > 0 else np.nan

    @staticmethod
    def _dominant(row: dict, attrs: list[str]) -> str | None:
        """The attribute with the highest percentage (None if tied or all unknown/zero)."""
        values = sorted(((row[x], x) for x in attrs if not np.isnan(row[x])), reverse=True)
        if not values or values[0][0] <= 0 or (len(values) > 1 and values[0][0] == values[1][0]):
            return None
        return values[0][1]

    def _dominant_contrast(self, row_a, row_b, attrs) -> tuple[str, str, float] | None:
        """(a's dominant, b's dominant, strength) when they differ clearly, else None."""
        m = self.margins
        xa, xb = self._dominant(row_a, attrs), self._dominant(row_b, attrs)
        if xa is None or xb is None or xa == xb:
            return None
        if row_a[xa] < m.dominant_min or row_b[xb] < m.dominant_min:
            return None
        gain_a, gain_b = row_a[xa] - row_b[xa], row_b[xb] - row_a[xb]
        if gain_a < m.contrast or gain_b < m.contrast:
            return None
        return xa, xb, (gain_a + gain_b) / 200

    # -- AwA2 -----------------------------------------------------------------------------------

    def _awa2_claims(self, a: str, b: str) -> list[_Claim]:
        t, m = self.table, self.margins
        row_a, row_b = t.row(a), t.row(b)
        claims: list[_Claim] = []
        sa, sb = row_a["big"] - row_a["small"], row_b["big"] - row_b["small"]
        if not np.isnan(sa) and not np.isnan(sb) and abs(sa - sb) >= m.awa2_size:
            bigger = sa > sb
            much = abs(sa - sb) >= 100
            adj = ("much " if much else "") + ("bigger" if bigger else "smaller")
            opp = ("much " if much else "") + ("smaller" if bigger else "bigger")
            claims.append(_Claim(MORE_TEMPLATES, {"adj": adj, "opp": opp}, "size", "size",
                                 ("big", "small"), sa, sb, 1 if bigger else -1,
                                 min(1.0, abs(sa - sb) / 100)))
        colours = t.groups()["colour"]
        contrast = self._dominant_contrast(row_a, row_b, colours)
        if contrast is not None:
            xa, xb, strength = contrast
            claims.append(_Claim(CONTRAST_IS_TEMPLATES, {"A": xa, "B": xb}, "colour", "colour",
                                 (xa, xb), row_a[xa], row_b[xa], 1, strength, other_attribute=xb))
        for group, attrs in t.groups().items():
            if group in ("size", "colour"):
                continue
            for attr in attrs:
                va, vb = row_a[attr], row_b[attr]
                if attr not in AWA2_PRESENCE or np.isnan(va) or np.isnan(vb):
                    continue
                vp, neg = AWA2_PRESENCE[attr]
                for side in (1, -1):
                    has, lacks = (va, vb) if side == 1 else (vb, va)
                    if has >= m.awa2_present and lacks <= m.awa2_absent:
                        claims.append(_Claim(
                            PRESENT_A_TEMPLATES if side == 1 else PRESENT_B_TEMPLATES,
                            {"A": vp, "B": neg}, group, attr, (attr,), va, vb, side,
                            (has - lacks) / 100))
        return claims


# ---------------------------------------------------------------------------------------------
# Pair writer: CUB photo pairs with attribute difference texts
# ---------------------------------------------------------------------------------------------

class AttributePairWriter(PairWriter):
    """Pairs of CUB photos of different classes; the text is one of the `top_k` differences.

    Pairs of classes with no clear difference are skipped (another pair is drawn).
    """

    name = "attributes"

    def __init__(self, dataset: CubDataset, table: AttributeTable, split: str | None = "train",
                 top_k: int = 3, margins: Margins = Margins()):
        self.sampler = CubPairSampler(dataset, split)
        self.writer = AttributeWriter(table, margins=margins)
        self.top_k = top_k

    def pairs(self, n: int, rng: random.Random) -> Iterator[PairRecord]:
        made = tries = 0
        while made < n:
            tries += 1
            if tries > 20 * n + 100:
                raise RuntimeError("too few class pairs with a clear difference")
            image_a, image_b = self.sampler.sample(rng)
            differences = self.writer.describe(image_a.class_name, image_b.class_name,
                                               n=self.top_k, rng=rng)
            if not differences:
                continue
            diff = rng.choice(differences)
            made += 1
            yield PairRecord(image_a.path, image_b.path, diff.text, self.name,
                             class_a=image_a.class_name, class_b=image_b.class_name,
                             source=diff.source())
