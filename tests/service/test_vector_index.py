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


@pytest.mark.parametrize("k", [1, 10, 40])
def test_top_k_rows_matches_a_full_sort_on_long_vectors_with_ties_and_masked_rows(k):
    from service.vector_index import TOP_K_BLOCK, top_k_rows

    n = 4 * 40 * TOP_K_BLOCK + 123  # long enough for the block-maximum threshold, with a partial last block
    scores = np.round(rng.normal(size=n), 2).astype(np.float32)  # many ties
    scores[rng.random(n) < 0.3] = -np.inf
    scores[-5:] = 9.0  # the best ones in the partial last block
    rows = top_k_rows(scores, k)
    assert len(rows) == k == len(set(rows.tolist()))
    kth = np.sort(scores)[-k]
    assert np.all(scores[rows] >= kth) and np.sum(scores > kth) <= k


def test_top_k_rows_when_almost_everything_is_masked():
    from service.vector_index import top_k_rows

    scores = np.full(300_000, -np.inf, np.float32)
    scores[[7, 299_999]] = [0.5, 0.1]
    assert {7, 299_999} <= set(top_k_rows(scores, 10).tolist())
    assert set(top_k_rows(scores, 2).tolist()) == {7, 299_999}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_search_of_a_large_index_with_filters_exclusions_and_dead_rows_matches_brute_force(dtype, monkeypatch):
    monkeypatch.setattr("service.vector_index.SCORE_CHUNK_ROWS", 5000)  # float16: several chunks
    n, dim = 60_000, 16
    vectors = normalize(rng.normal(size=(n, dim))).astype(np.float32)
    metadata = [{"even": i % 2 == 0} for i in range(n)]
    index = ExactIndex(dim, dtype, capacity=n)
    ids = [f"v{i}" for i in range(n)]
    index.upsert(ids, vectors, metadata)
    index.remove([f"v{i}" for i in range(0, 600, 3)], compact=False)  # dead rows stay in the matrix
    stored = vectors.astype(dtype).astype(np.float32)
    view = index.snapshot()
    allowed = index.filter_mask({"even": True})
    queries = normalize(rng.normal(size=(3, dim))).astype(np.float32)
    excluded = (index.row_of("v2"), index.row_of("v4"))
    hits = index.search([Query(queries[0], 20), Query(queries[1], 20, allowed, excluded), Query(queries[2], 5, None, excluded)], view)
    alive = np.ones(n, bool)
    alive[np.arange(0, 600, 3)] = False
    for q, found, mask, skip in ((queries[0], hits[0], alive, ()), (queries[1], hits[1], alive & (np.arange(n) % 2 == 0), excluded),
                                 (queries[2], hits[2], alive, excluded)):
        scores = (stored @ q).astype(np.float64)
        scores[~mask] = -np.inf
        scores[list(skip)] = -np.inf
        expected = np.argsort(-scores, kind="stable")[: len(found)]
        assert [h.id for h in found] == [ids[i] for i in expected]
        np.testing.assert_allclose([h.score for h in found], scores[expected], atol=1e-4)


# -- Int8Index ---------------------------------------------------------------------------------------
def _twins(n, dim, dtype, monkeypatch, segment_rows=1000):
    """An ExactIndex and an Int8Index (int8 pass at any size, several segments) holding the same items."""
    from service.vector_index import Int8Index

    monkeypatch.setattr("service.vector_index.INT8_SEGMENT_ROWS", segment_rows)
    flat, int8 = ExactIndex(dim, dtype, capacity=8), Int8Index(dim, dtype, capacity=8, min_rows=0)
    vectors = normalize(rng.normal(size=(n, dim))).astype(np.float32)
    ids = [f"v{i}" for i in range(n)]
    metadata = [{"odd": i % 2} for i in range(n)]
    for start in range(0, n, 700):  # grows the matrix and widens the partial last segment several times
        for index in (flat, int8):
            index.upsert(ids[start : start + 700], vectors[start : start + 700], metadata[start : start + 700])
    return flat, int8, ids, vectors


def _assert_same_hits(a, b):
    assert [h.id for h in a] == [h.id for h in b]
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_int8_index_gives_the_exact_top_k_where_the_int8_scores_alone_do_not(dtype, monkeypatch):
    flat, int8, ids, vectors = _twins(6_500, 48, dtype, monkeypatch)
    for index in (flat, int8):  # replaced items and dead rows
        index.upsert(["v3", "v4000"], vectors[[10, 20]], [None, None])
        index.remove([f"v{i}" for i in range(100, 400)], compact=False)
    assert int8.snapshot().size == flat.snapshot().size == 6_502
    queries = normalize(rng.normal(size=(12, 48))).astype(np.float32)
    allowed = int8.filter_mask({"odd": 1})
    assert np.array_equal(allowed, flat.filter_mask({"odd": 1}))
    batch = [Query(q, k, allowed if i % 3 == 1 else None, (int8.row_of("v7"), int8.row_of("v8")) if i % 3 == 2 else ())
             for i, q in enumerate(queries) for k in [(1, 10, 50)[i % 3]]]
    for a, b in zip(flat.search(batch), int8.search(batch)):
        _assert_same_hits(a, b)
    # the int8 scores on their own would get some of these wrong: the exact re-scoring is what makes them right
    view = int8.snapshot()
    approximate, bounds = view.codes.approximate_scores(queries, view.size)
    exact = view.vectors[: view.size].astype(np.float32) @ queries.T
    assert np.all(np.abs(approximate - exact.T) <= bounds[:, None] + 1e-6)  # the bound holds
    wrong = sum(set(np.argsort(-a)[:50]) != set(np.argsort(-e)[:50]) for a, e in zip(approximate, exact.T))
    assert wrong >= 1


def test_int8_index_after_compaction_and_on_an_older_snapshot(monkeypatch):
    flat, int8, ids, vectors = _twins(3_000, 32, "float32", monkeypatch, segment_rows=512)
    q = normalize(rng.normal(size=32)).astype(np.float32)
    old_view = int8.snapshot()
    before = int8.search([Query(q, 20)], old_view)[0]
    for index in (flat, int8):
        index.upsert([f"new-{i}" for i in range(900)], np.repeat(q[None, :], 900, axis=0), [None] * 900)  # grows and widens
    assert int8.search([Query(q, 20)], old_view)[0] == before  # the older snapshot is undisturbed
    assert all(h.id.startswith("new-") for h in int8.search([Query(q, 20)])[0])
    for index in (flat, int8):
        index.remove([f"new-{i}" for i in range(900)] + ids[:1500])  # compacts
    assert int8.snapshot().size == 1500 and int8.snapshot().codes.capacity == 1500
    _assert_same_hits(flat.search([Query(q, 25)])[0], int8.search([Query(q, 25)])[0])


def test_int8_index_below_min_rows_is_the_flat_pass_bit_for_bit():
    from service.vector_index import Int8Index

    vectors = normalize(rng.normal(size=(2_903, 64))).astype(np.float32)  # a CUB-sized collection: rank = /v1/rank
    ids = [str(i) for i in range(len(vectors))]
    flat, int8 = ExactIndex(64), Int8Index(64)
    for index in (flat, int8):
        index.upsert(ids, vectors, [None] * len(ids))
    q = normalize(rng.normal(size=64)).astype(np.float32)
    assert flat.search([Query(q, len(ids))]) == int8.search([Query(q, len(ids))])
    assert int8.nbytes >= flat.nbytes + 64 * len(ids)  # the int8 copy is kept (used once the collection is large)


def test_make_index_and_the_setting():
    from service.settings import Settings
    from service.vector_index import Int8Index, make_index

    assert type(make_index("flat", 8)) is ExactIndex and type(make_index("int8", 8, "float16")) is Int8Index
    with pytest.raises(ValueError):
        make_index("hnsw", 8)
    assert Settings().collection_index == "int8"
    assert Settings(collection_index="flat").collection_index == "flat"


def test_a_ring_scan_gives_each_joining_request_the_exact_top_k(monkeypatch):
    """Requests join the ring between segments (one made against an older, smaller view), some leave
    while others go on; each gets what the float pass gives on its own view."""
    flat, int8, ids, vectors = _twins(5_000, 32, "float32", monkeypatch, segment_rows=1024)  # 5 segments
    old_view, old_flat = int8.snapshot(), flat.snapshot()
    more = normalize(rng.normal(size=(3_000, 32)))
    for index in (flat, int8):  # three more segments, in a grown (new) int8 copy
        index.upsert([f"new-{i}" for i in range(3_000)], more, [None] * 3_000)
        index.remove(["v1", "v2"], compact=False)
    queries = normalize(rng.normal(size=(6, 32))).astype(np.float32)
    requests = {
        "a": (old_view, old_flat, [Query(queries[0], 10)]),
        "b": (int8.snapshot(), flat.snapshot(), [Query(queries[1], 5), Query(queries[2], 30, int8.filter_mask({"odd": 0}))]),
        "c": (int8.snapshot(), flat.snapshot(), [Query(queries[3], 1, None, (int8.row_of("v9"),))]),
        "d": (old_view, old_flat, [Query(queries[4], 20), Query(queries[5], 3)]),
    }
    assert int8.snapshot().codes is not old_view.codes
    ring = int8.ring_scan()
    assert ring.accepts(old_view)
    joins = {0: "a", 2: "b", 5: "c", 9: "d"}  # at these steps
    results, steps = {}, 0
    while len(results) < len(requests):
        if steps in joins:
            view, _, queries_ = requests[joins[steps]]
            ring.add(view, queries_, joins[steps])
        results.update(ring.step())
        steps += 1
    assert steps > 9
    for name, (view, flat_view, queries_) in requests.items():
        expected = flat.search(queries_, flat_view)
        assert len(results[name]) == len(expected)
        for a, b in zip(expected, results[name]):
            _assert_same_hits(a, b)
