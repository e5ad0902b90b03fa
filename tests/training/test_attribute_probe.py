"""The attribute probe: each fact's direction in image-embedding space."""

from __future__ import annotations

import random

import numpy as np
import pytest


@pytest.fixture(scope="module")
def writer(data_dir):
    from training.data import AttributeTable
    from training.pairs.attributes import AttributeWriter

    return AttributeWriter(AttributeTable.from_cub(data_dir), noun="bird")


def test_attribute_probe_directions_order_pairs_as_the_facts_say(writer):
    """Embeddings that are a noisy linear image of the attribute rows: each fact's probe direction
    must put the two classes in the order the fact states."""
    from training.attribute_probe import AttributeProbe, attribute_targets, fact_key

    table = writer.table
    classes = sorted(table.classes)[:60]
    rng = np.random.default_rng(0)
    columns, rows = attribute_targets(table, classes)
    rows[:, columns.index("bill length")] = 0  # bill-length facts are left out below
    mix = rng.normal(size=(len(columns), 96)) / 10
    photos = [(c, rows[i] @ mix + rng.normal(scale=2.0, size=96)) for i, c in enumerate(classes) for _ in range(8)]
    probe = AttributeProbe(table, np.stack([e for _, e in photos]), [c for c, _ in photos], ridge=1.0)
    centroid = {c: np.mean([e for k, e in photos if k == c], axis=0) for c in classes}
    right: dict[str, int] = {}
    n: dict[str, int] = {}
    pick = random.Random(0)
    for _ in range(150):
        a, b = pick.sample(classes, 2)
        for d in writer.describe(a, b):
            if d.kind == "bill length":
                continue
            key = fact_key(d)
            v = probe.direction(key)
            assert abs(np.linalg.norm(v) - 1) < 1e-6
            gap = centroid[a] - centroid[b]
            n[d.group] = n.get(d.group, 0) + 1
            right[d.group] = right.get(d.group, 0) + int(v @ gap > 0)
    assert {"size", "colour", "pattern"} <= set(n)
    assert sum(n.values()) > 300
    for group in n:  # a sign or column mix-up in `direction` drops a group to about 0.5 or below
        assert right[group] / n[group] > 0.9, (group, right[group], n[group])


def test_fact_from_a_pair_record_source_equals_the_fact_of_the_difference(writer):
    from training.attribute_probe import fact_from_source, fact_key

    diffs = writer.describe("Cardinal", "White_Pelican") + writer.describe("Blue_Jay", "American_Crow")
    assert any(d.other_attribute for d in diffs)
    for d in diffs:
        assert fact_from_source(d.source()) == fact_key(d)
    assert fact_from_source({"test": True}) is None


def test_awa2_probe_directions_order_animal_pairs_as_the_facts_say(data_dir):
    """The same check on the AwA2 table (no ordinal size score: size facts are big vs small)."""
    from training.attribute_probe import AttributeProbe, fact_key, table_targets
    from training.data import AttributeTable
    from training.pairs.attributes import AttributeWriter

    table = AttributeTable.from_awa2(data_dir)
    writer = AttributeWriter(table, noun="animal")
    classes = sorted(table.classes)
    rng = np.random.default_rng(0)
    columns, rows = table_targets(table, classes)
    mix = rng.normal(size=(len(columns), 96)) / 10
    photos = [(c, rows[i] @ mix + rng.normal(scale=2.0, size=96)) for i, c in enumerate(classes) for _ in range(4)]
    probe = AttributeProbe(table, np.stack([e for _, e in photos]), [c for c, _ in photos], ridge=1.0,
                           targets=table_targets)
    centroid = {c: np.mean([e for k, e in photos if k == c], axis=0) for c in classes}
    right, n = {}, {}
    pick = random.Random(0)
    for _ in range(100):
        a, b = pick.sample(classes, 2)
        for d in writer.describe(a, b):
            v = probe.direction(fact_key(d))
            n[d.group] = n.get(d.group, 0) + 1
            right[d.group] = right.get(d.group, 0) + int(v @ (centroid[a] - centroid[b]) > 0)
    assert "size" in n and sum(n.values()) > 200
    for group in n:
        assert right[group] / n[group] > 0.9, (group, right[group], n[group])
