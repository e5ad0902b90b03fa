"""TowerBatcher: tower calls bounded by items and, for texts, by tokens (TEI's max-batch-tokens)."""

from __future__ import annotations

import asyncio

import numpy as np

from models.tokenization import token_lengths
from service.batcher import TowerBatcher


def _ids(length: int, rows: int = 1) -> np.ndarray:
    ids = np.zeros((rows, 77), np.int64)
    ids[:, :length] = 7
    return ids


async def _serve(batcher: TowerBatcher, requests: list[np.ndarray]) -> list[np.ndarray]:
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(r) for r in requests))
    finally:
        await batcher.stop()


def test_text_batches_are_bounded_by_tokens_and_keep_arrival_order():
    calls: list[list[int]] = []

    def run(ids):
        calls.append(token_lengths(ids).tolist())
        return ids[:, :1].astype(np.float32)  # row i's answer: its first token

    batcher = TowerBatcher("text", run, max_batch_size=1000, max_wait_ms=200, queue_limit=1000,
                           cost=lambda ids: int(token_lengths(ids).sum()), max_batch_cost=100)
    requests = [_ids(10, 4), _ids(50), _ids(10, 3), _ids(70), _ids(5, 2)]
    for i, r in enumerate(requests):
        r[:, 0] = i
    out = asyncio.run(_serve(batcher, requests))
    # 40 + 50 fit in 100 tokens; + 30 would not; 30 + 70 fit; then 10
    assert calls == [[10] * 4 + [50], [10] * 3 + [70], [5] * 2]
    assert [o[:, 0].tolist() for o in out] == [[i] * len(r) for i, r in enumerate(requests)]


def test_a_request_over_the_budget_still_runs_alone():
    calls = []
    batcher = TowerBatcher("text", lambda ids: calls.append(len(ids)) or np.zeros((len(ids), 2), np.float32),
                           max_batch_size=1000, max_wait_ms=50, queue_limit=1000,
                           cost=lambda ids: int(token_lengths(ids).sum()), max_batch_cost=100)
    out = asyncio.run(_serve(batcher, [_ids(60, 3), _ids(8)]))
    assert calls == [3, 1] and [len(o) for o in out] == [3, 1]


def test_without_a_cost_batches_are_bounded_by_items():
    calls = []
    batcher = TowerBatcher("image", lambda x: calls.append(len(x)) or np.zeros((len(x), 2), np.float32),
                           max_batch_size=4, max_wait_ms=50, queue_limit=100)
    asyncio.run(_serve(batcher, [np.zeros((3, 1)), np.zeros((2, 1)), np.zeros((1, 1))]))
    assert calls == [3, 3]


def test_bulk_work_never_rides_along_with_ordinary_work_and_comes_in_small_batches():
    """4 class sets' pieces (8 texts each) and an ordinary request, all waiting: the ordinary one runs
    alone, first; bulk batches hold at most max_bulk_items (one piece), so an ordinary request waits
    behind at most one small bulk batch."""
    calls: list[tuple[int, ...]] = []

    def run(x):
        calls.append(tuple(int(v) for v in x[:, 0]))
        return x[:, :1].astype(np.float32)

    batcher = TowerBatcher("text", run, max_batch_size=1000, max_wait_ms=50, queue_limit=1000, max_bulk_items=8)

    async def main():
        batcher.start()
        try:
            bulk = [batcher.submit(np.full((8, 2), 10 + i), bulk=True) for i in range(4)]
            ordinary = batcher.submit(np.full((1, 2), 1))
            return await asyncio.gather(ordinary, *bulk)
        finally:
            await batcher.stop()

    out = asyncio.run(main())
    assert [o[:, 0].tolist() for o in out] == [[1]] + [[10 + i] * 8 for i in range(4)]
    assert calls == [(1,)] + [(10 + i,) * 8 for i in range(4)]


def test_engine_decodes_jpegs_reduced_only_when_configured(encoder):
    from service.inference import InferenceEngine
    from service.metrics import ServiceMetrics
    from service.settings import Settings

    assert InferenceEngine(encoder, Settings(), ServiceMetrics()).draft_min_side is None
    side = max(encoder.preprocess_cfg.image_size)
    assert InferenceEngine(encoder, Settings(jpeg_draft_margin=1.5), ServiceMetrics()).draft_min_side == int(1.5 * side)


def test_with_two_workers_two_tower_calls_run_at_once_and_each_request_gets_its_rows():
    import threading

    both_running = threading.Barrier(2, timeout=20)  # a call returns only once another runs beside it

    def run(x):
        both_running.wait()
        return x[:, :1].astype(np.float32)

    batcher = TowerBatcher("image", run, max_batch_size=2, max_wait_ms=1, queue_limit=100, workers=2)
    requests = [np.full((2, 1), i) for i in range(4)]
    out = asyncio.run(_serve(batcher, requests))
    assert [o[:, 0].tolist() for o in out] == [[i, i] for i in range(4)]


def test_a_failing_call_fails_only_its_own_requests_while_another_runs():
    import threading

    started = threading.Barrier(2, timeout=20)

    def run(x):
        started.wait()
        if x[0, 0] == 0:
            raise RuntimeError("tower broke")
        return x[:, :1].astype(np.float32)

    batcher = TowerBatcher("image", run, max_batch_size=1, max_wait_ms=1, queue_limit=100, workers=2)

    async def scenario():
        batcher.start()
        try:
            return await asyncio.gather(batcher.submit(np.zeros((1, 1))), batcher.submit(np.ones((1, 1))), return_exceptions=True)
        finally:
            await batcher.stop()

    failed, ok = asyncio.run(scenario())
    assert isinstance(failed, RuntimeError) and ok.tolist() == [[1.0]]
