"""The attribute writer never contradicts the table, covers both orders and varies its phrasing.

The checks read each sentence with a small independent interpreter (clauses, who is the subject,
which colour/feature each bird is said to have) and compare with the table's percentages.
"""

import random
import re

import numpy as np
import pytest

from training.data import AttributeTable, CubDataset, load_class_split, size_score
from training.pairs.attributes import (CUB_BODY_SHAPES, CUB_SHAPE_GROUPS, AttributePairWriter,
                                       AttributeWriter, NoDifference)
from training.pairs.base import PairRecord

ORDINALS = ("first", "second")


@pytest.fixture(scope="module")
def cub_table(data_dir):
    return AttributeTable.from_cub(data_dir)


@pytest.fixture(scope="module")
def awa2_table(data_dir):
    return AttributeTable.from_awa2(data_dir)


def clauses(text: str) -> list[tuple[str, str | None]]:
    """(clause, owner) pairs: the owner is the first ordinal in the clause, else inherited;
    the part after 'rather than' belongs to the other ordinal."""
    text = text.rstrip(".").lower()
    parts = []
    for i, piece in enumerate(text.split(" rather than ")):
        for clause in re.split(r",\s*|\s+but\s+", piece):
            parts.append((clause, i))
    owner, out = None, []
    for clause, after_rather in parts:
        found = [w for w in re.findall(r"\b(first|second)\b", clause)]
        if found:
            owner = found[0]
        elif after_rather:
            owner = "second" if owner == "first" else "first"
        out.append((clause, owner))
    return out


def claimed_direction(text: str) -> int:
    """+1 if the sentence says the first is larger/bigger/longer, -1 if smaller/shorter."""
    for clause, owner in clauses(text):
        if clause.startswith("compared"):
            continue
        more = re.search(r"\b(larger|bigger|longer)\b", clause)
        less = re.search(r"\b(smaller|shorter)\b", clause)
        if more or less:
            return (1 if more else -1) * (1 if owner == "first" else -1)
    raise AssertionError(f"no comparison in {text!r}")


def owner_of(text: str, phrase: str) -> str:
    owners = {owner for clause, owner in clauses(text) if re.search(rf"\b{re.escape(phrase)}\b", clause)}
    assert len(owners) == 1, (text, phrase, owners)
    return owners.pop()


def presence(text: str, feature: str) -> dict:
    """ordinal -> True/False: who the sentence says has the feature."""
    said = {}
    unlike = None
    for clause, owner in clauses(text):
        if feature.split()[-1] in clause:
            negated = bool(re.search(r"\b(does not|has no|is not)\b", clause))
            said[owner] = not negated
        elif clause.startswith("unlike"):
            unlike = owner
    if unlike is not None:
        other = "second" if unlike == "first" else "first"
        if other in said:
            said[unlike] = not said[other]
    return said


def dominant(table, class_name, attrs):
    return max(attrs, key=lambda a: table.value(class_name, a))


def check_cub(table, a, b, d, margins):
    """Independent check of one CUB difference against the table."""
    groups = table.groups()
    if d.kind == "size":
        sa, sb = size_score(table, a), size_score(table, b)
        assert (d.value_a, d.value_b) == pytest.approx((sa, sb))
        assert claimed_direction(d.text) == np.sign(sa - sb) and abs(sa - sb) >= margins.size
    elif d.kind == "bill length":
        def length(c):
            w = np.array([table.value(c, x) for x in groups["has_bill_length"]])
            # columns: about the same as head, longer than head, shorter than head
            return (w @ np.array([2, 3, 1])) / w.sum()
        assert (d.value_a, d.value_b) == pytest.approx((length(a), length(b)))
        assert claimed_direction(d.text) == np.sign(length(a) - length(b))
        assert abs(length(a) - length(b)) >= margins.bill_length
        assert "bill" in d.text
    elif d.group in ("colour", "shape"):
        xa, xb = d.attributes
        group = xa.split("::")[0]
        attrs = groups[group]
        assert dominant(table, a, attrs) == xa and dominant(table, b, attrs) == xb and xa != xb
        assert table.value(a, xa) - table.value(b, xa) >= margins.contrast
        assert table.value(b, xb) - table.value(a, xb) >= margins.contrast
        if d.group == "colour":
            ca, cb = xa.split("::")[1], xb.split("::")[1]
        else:  # the words the writer uses for a shape value, e.g. "cone-shaped bill", "a duck"
            vocab = {**{k: v for phrases, _ in CUB_SHAPE_GROUPS.values() for k, v in phrases.items()},
                     **CUB_BODY_SHAPES}
            ca, cb = (re.sub(r"^(a|an) ", "", vocab[x.split("::")[1]]) for x in (xa, xb))
        assert owner_of(d.text, ca) == "first" and owner_of(d.text, cb) == "second", d.text
    elif d.group == "pattern":
        (attr,) = d.attributes
        group, value = attr.split("::")
        has, lacks = (a, b) if d.direction == 1 else (b, a)
        assert table.value(has, attr) - table.value(lacks, attr) >= margins.pattern
        if group != "has_head_pattern":
            assert dominant(table, has, groups[group]) == attr
            assert dominant(table, lacks, groups[group]) != attr
            feature = value
        else:
            assert table.value(lacks, attr) <= margins.absent_max
            feature = {"eyering": "eye ring", "eyebrow": "eyebrow", "eyeline": "eye line",
                       "crested": "crest", "masked": "mask", "capped": "cap", "malar": "malar",
                       "striped": "striped", "spotted": "spotted"}[value]
        said = presence(d.text, feature)
        assert said.get("first") == (d.direction == 1) or said.get("second") == (d.direction == -1), d.text
        for ordinal, has_it in said.items():
            assert has_it == ((ordinal == "first") == (d.direction == 1)), d.text
    else:
        raise AssertionError(f"unchecked kind {d.kind}")


def random_class_pairs(classes, count, seed):
    rng = random.Random(seed)
    return [tuple(rng.sample(classes, 2)) for _ in range(count)]


def test_cub_no_contradictions_on_many_pairs_both_orders(cub_table):
    writer = AttributeWriter(cub_table)
    checked = 0
    for a, b in random_class_pairs(cub_table.classes, 150, seed=1):
        for x, y in ((a, b), (b, a)):
            for d in writer.all_phrasings(x, y):
                check_cub(cub_table, x, y, d, writer.margins)
                checked += 1
    assert checked > 5000


def test_both_orders_mirror_each_other(cub_table):
    writer = AttributeWriter(cub_table)
    for a, b in random_class_pairs(cub_table.classes, 100, seed=2):
        ab = {(d.kind, d.attributes[0]): d.direction for d in writer.describe(a, b)}
        ba = {(d.kind, d.attributes[-1] if d.other_attribute else d.attributes[0]): d.direction
              for d in writer.describe(b, a)}
        assert len(ab) == len(ba)
        for key, direction in ab.items():
            if key[0] in ("size", "bill length") or "pattern" in key[0]:
                assert ba[key] == -direction


def test_examples_from_the_issue(cub_table):
    writer = AttributeWriter(cub_table)
    texts = [d.text for d in writer.all_phrasings("White_Pelican", "Anna_Hummingbird")]
    assert "The first bird is much larger than the second." in texts
    assert "The second bird is much smaller than the first." in texts
    hint = writer.hint("Red_winged_Blackbird", "Yellow_headed_Blackbird")
    assert "black" in hint and "yellow" in hint
    assert writer.hint("Red_winged_Blackbird", "Yellow_headed_Blackbird") == hint  # deterministic
    assert writer.describe("Mallard", "Mallard") == []
    with pytest.raises(NoDifference):
        writer.hint("Mallard", "Mallard")


def test_phrasing_varies_and_groups_are_covered(cub_table):
    writer = AttributeWriter(cub_table, seed=3)
    texts, groups, templates = set(), set(), set()
    for a, b in random_class_pairs(cub_table.classes, 300, seed=3):
        for d in writer.describe(a, b, n=3):
            texts.add(d.text)
            groups.add(d.group)
            templates.add((d.kind.split()[-1], d.template))
    assert groups == {"size", "colour", "pattern", "shape"}
    assert len(texts) > 500 and len(templates) >= 15
    starts = {t.split()[0] + " " + t.split()[1] for t in texts}
    assert {"The first", "The second", "Unlike the", "Compared with"} <= starts


def test_describe_puts_one_difference_of_each_group_first(cub_table):
    writer = AttributeWriter(cub_table)
    diffs = writer.describe("White_Pelican", "Indigo_Bunting")
    groups = {d.group for d in diffs}
    assert len(groups) >= 3
    assert {d.group for d in diffs[:len(groups)]} == groups


def test_awa2_differences(awa2_table):
    writer = AttributeWriter(awa2_table)
    assert writer.noun == "animal"
    texts = [d.text for d in writer.all_phrasings("elephant", "mouse")]
    assert "The first animal is much bigger than the second." in texts
    zebra = [d.text for d in writer.all_phrasings("zebra", "grizzly+bear")]
    assert "Unlike the second, the first animal has stripes." in zebra
    for a, b in random_class_pairs(awa2_table.classes, 200, seed=4):
        for d in writer.all_phrasings(a, b):
            va, vb = awa2_table.row(a), awa2_table.row(b)
            if d.kind == "size":
                assert claimed_direction(d.text) == np.sign((va["big"] - va["small"]) - (vb["big"] - vb["small"]))
            elif d.kind == "colour":
                xa, xb = d.attributes
                assert owner_of(d.text, xa) == "first" and owner_of(d.text, xb) == "second"
                assert va[xa] == max(v for k, v in va.items() if k in awa2_table.groups()["colour"])
            else:
                attr = d.attributes[0]
                has, lacks = (va, vb) if d.direction == 1 else (vb, va)
                assert has[attr] >= writer.margins.awa2_present and lacks[attr] <= writer.margins.awa2_absent
                word = {"toughskin": "tough skin", "longleg": "long legs", "longneck": "long neck",
                        "bulbous": "bulky", "pads": "paw pads"}.get(attr, attr)
                said = presence(d.text, word)
                assert said and all(h == ((o == "first") == (d.direction == 1)) for o, h in said.items()), d.text


def test_attribute_pair_writer_records(data_dir, cub_table):
    reserved = load_class_split()
    dataset = CubDataset(data_dir, exclude_classes=reserved)
    writer = AttributePairWriter(dataset, cub_table, split="train")
    records = list(writer.pairs(200, random.Random(0)))
    assert len(records) == 200
    train_paths = {im.path for im in dataset.split("train")}
    for r in records:
        assert isinstance(r, PairRecord) and r.writer == "attributes"
        assert r.class_a != r.class_b and not {r.class_a, r.class_b} & set(reserved)
        assert r.image_a in train_paths and r.image_b in train_paths
        assert r.source["attributes"] and r.text.endswith(".")
    assert [r.to_json() for r in writer.pairs(50, random.Random(7))] == \
        [r.to_json() for r in writer.pairs(50, random.Random(7))]


def test_checker_catches_swapped_sentences(cub_table):
    """The interpreter above is not vacuous: swapping first/second makes every claim fail."""
    from dataclasses import replace
    writer = AttributeWriter(cub_table)
    caught = total = 0
    for a, b in random_class_pairs(cub_table.classes, 30, seed=5):
        for d in writer.all_phrasings(a, b):
            swapped = re.sub(r"\b(first|second)\b", lambda m: {"first": "second", "second": "first"}[m[0]], d.text)
            total += 1
            try:
                check_cub(cub_table, a, b, replace(d, text=swapped), writer.margins)
            except AssertionError:
                caught += 1
    assert total > 500 and caught == total
