"""ExactIndex: exact top-k against brute force, float16, upserts, deletes, compaction, filters, snapshots."""

from __future__ import annotations

import numpy as np
import pytest

from models.difference import normalize
from service.vector_index import ExactIndex, Query

rng = np.random.default_rng(7)


def _index(n=500, dim=24, dtype="float32", metadata=None):
    vectors = normalize(rng.normal(size=(n, dim)))
    index = ExactIndex(dim, dtype, capacity=8)  # small capacity: the matrix has to grow
    ids = [f"item-{i}" for i in range(n)]
    index.upsert(ids, vectors, metadata or [None] * n)
    return index, ids, vectors


def test_search_matches_brute_force_over_several_chunks(monkeypatch):
    monkeypatch.setattr("service.vector_index.SCORE_CHUNK_ROWS", 64)  # many chunks
    index, ids, vectors = _index()
    queries = normalize(rng.normal(size=(3, 24)))
    hits = index.search([Query(q, 10) for q in queries])
    for q, found in zip(queries, hits):
        scores = vectors @ q
        expected = np.argsort(-scores)[:10]
        assert [h.id for h in found] == [ids[i] for i in expected]
        np.testing.assert_allclose([h.score for h in found], scores[expected], atol=1e-5)


def test_float16_keeps_the_order_up_to_near_ties():
    index32, ids, vectors = _index(dtype="float32")
    index32._compact()  # exact size, like index16
    index16 = ExactIndex(24, "float16", capacity=len(ids))
    index16.upsert(ids, vectors, [None] * len(ids))
    q = normalize(rng.normal(size=24))
    a = [h.score for h in index32.search([Query(q, 50)])[0]]
    b = [h.score for h in index16.search([Query(q, 50)])[0]]
    np.testing.assert_allclose(a, b, atol=2e-3)
    assert index16.nbytes < index32.nbytes * 0.6


def test_upsert_replaces_and_remove_deletes_and_compaction_keeps_results():
    index, ids, vectors = _index(n=3000)
    q = normalize(rng.normal(size=24))
    # replace item-0 by the query itself: it must come first
    index.upsert(["item-0"], q[None, :], [{"k": 1}])
    assert len(index) == 3000
    assert index.search([Query(q, 1)])[0][0].id == "item-0"
    assert index.get("item-0")[1] == {"k": 1}
    removed = index.remove([f"item-{i}" for i in range(1, 2001)] + ["missing"])
    assert removed == 2000 and len(index) == 1000
    assert index.snapshot().size == 1000  # compacted (2000 dead >= a quarter)
    hits = index.search([Query(q, 1000)])[0]
    assert {h.id for h in hits} == {f"item-{i}" for i in [0, *range(2001, 3000)]}
    assert index.ids(0, 2) == ["item-2001", "item-2002"] and index.ids(999, 5) == ["item-0"]  # insertion order


def test_filters_and_excluded_rows():
    md = [{"colour": ["red", "blue", "green"][i % 3], "size": i % 2, "big": i % 2 == 1} for i in range(300)]
    index, ids, vectors = _index(n=300, metadata=md)
    q = normalize(rng.normal(size=24))
    allowed = index.filter_mask({"colour": ["red", "green"], "size": 1.0})
    hits = index.search([Query(q, 300, allowed)])[0]
    assert hits and all(h.metadata["colour"] in ("red", "green") and h.metadata["size"] == 1 for h in hits)
    assert len(hits) == sum(1 for m in md if m["colour"] != "blue" and m["size"] == 1)
    assert not index.search([Query(q, 5, index.filter_mask({"colour": "purple"}))])[0]
    assert len(index.search([Query(q, 300, index.filter_mask({"big": True}))])[0]) == 150
    best = index.search([Query(q, 1)])[0][0]
    second = index.search([Query(q, 1, excluded_rows=(index.row_of(best.id),))])[0][0]
    assert second.id != best.id


def test_a_search_on_a_snapshot_is_not_disturbed_by_later_writes():
    index, ids, vectors = _index(n=100)
    view = index.snapshot()
    q = vectors[5]
    index.upsert([f"new-{i}" for i in range(200)], np.repeat(q[None, :], 200, axis=0), [None] * 200)  # grows the matrix
    old = index.search([Query(q, 3)], view)[0]
    assert old[0].id == "item-5" and all(not h.id.startswith("new-") for h in old)
    assert index.search([Query(q, 3)])[0][0].id.startswith(("new-", "item-5"))


def test_bad_dtype_is_refused():
    with pytest.raises(ValueError):
        ExactIndex(8, "int8")
