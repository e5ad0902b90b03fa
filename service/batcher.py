"""Dynamic batching: concurrent requests share tower calls, and inference runs off the event loop.

One `TowerBatcher` per tower. A request submits its preprocessed inputs (pixels or token ids);
a worker task takes the waiting requests, up to `max_batch_size` items and, where a `cost` is
given, up to `max_batch_cost` of it (texts: their real token count, as TEI's `max-batch-tokens`,
so a batch holds many short texts or a few long ones; it waits at most `max_wait_ms` for more
once the first arrives), runs the tower on one thread reserved for
that tower, and hands each request its rows. The queue is bounded: a request that would push it
past `queue_limit` items is refused at once with `QueueFull` (the app answers 503 + Retry-After).
Bulk work (`submit(..., bulk=True)`: the pieces of a class set being built) waits in a second
queue that is served only when the first is empty; a batch holds either ordinary work or at most
`max_bulk_items` items of bulk work, so bulk work never delays an ordinary request by more than
one small bulk batch, and never rides along in its tower call. A request whose caller was
cancelled is skipped. After a tower call, once `idle_s` pass with nothing submitted, `on_idle` runs
in the tower's thread (the service hands the tower's working memory back to the OS there).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from service.metrics import ServiceMetrics

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The tower's queue holds too many items; retry after `retry_after_s`."""

    def __init__(self, tower: str, pending: int, limit: int, retry_after_s: int = 1):
        super().__init__(f"the {tower} queue is full ({pending} items waiting, limit {limit}); retry later")
        self.tower = tower
        self.retry_after_s = retry_after_s


@dataclass
class _Pending:
    inputs: np.ndarray
    future: asyncio.Future
    cost: int = 0
    enqueued: float = field(default_factory=time.perf_counter)


class TowerBatcher:
    """A bounded batching queue in front of one tower function `run(batch) -> [B, D]`."""

    def __init__(
        self,
        tower: str,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int,
        max_wait_ms: float,
        queue_limit: int,
        metrics: ServiceMetrics | None = None,
        cost: Callable[[np.ndarray], int] | None = None,
        max_batch_cost: int | None = None,
        max_bulk_items: int | None = None,
        on_idle: Callable[[], None] | None = None,
        idle_s: float = 0.0,
        workers: int = 1,
    ):
        self.tower = tower
        self.workers = max(1, int(workers))  # tower calls running at once, each in a thread of its own
        self._running: set[asyncio.Task] = set()
        self.on_idle = on_idle if idle_s > 0 else None
        self.idle_s = float(idle_s)
        self.max_bulk_items = int(max_bulk_items) if max_bulk_items else None
        self.run = run
        self.max_batch_size = int(max_batch_size)
        self.cost = cost
        self.max_batch_cost = int(max_batch_cost) if cost is not None and max_batch_cost else None
        self._pending_cost = 0
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.queue_limit = int(queue_limit)
        self.metrics = metrics
        self._queue: collections.deque[_Pending] = collections.deque()
        self._bulk: collections.deque[_Pending] = collections.deque()
        self._pending_items = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=f"pcclip-{tower}")

    @property
    def pending_items(self) -> int:
        return self._pending_items

    def start(self) -> None:
        """Start the worker task (call from the running event loop)."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._worker(), name=f"batcher-{self.tower}")

    async def stop(self) -> None:
        """Stop the worker; waiting requests get an error."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5.0)  # bounded: shutdown never hangs on a tower call
            self._task = None
        for task in list(self._running):  # their requests get the error below
            task.cancel()
        if self._running:
            await asyncio.wait(set(self._running), timeout=5.0)
        for queue in (self._queue, self._bulk):
            while queue:
                item = queue.popleft()
                if not item.future.done():
                    item.future.set_exception(RuntimeError("service is shutting down"))
        self._pending_items = 0
        self._pending_cost = 0
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, inputs: np.ndarray, bulk: bool = False) -> np.ndarray:
        """Queue one request's inputs [n, ...] and wait for its embeddings [n, D] (`bulk`: after all others)."""
        n = len(inputs)
        if n == 0:
            raise ValueError("empty batch")
        if self._task is None:
            raise RuntimeError(f"the {self.tower} batcher is not running")
        if self._pending_items + n > self.queue_limit:
            if self.metrics:
                self.metrics.rejected.labels(self.tower).inc(n)
            raise QueueFull(self.tower, self._pending_items, self.queue_limit)
        future = asyncio.get_running_loop().create_future()
        cost = int(self.cost(inputs)) if self.cost is not None else 0
        (self._bulk if bulk else self._queue).append(_Pending(inputs, future, cost))
        self._pending_items += n
        self._pending_cost += cost
        self._set_depth()
        self._wakeup.set()
        return await future

    def _set_depth(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.labels(self.tower).set(self._pending_items)

    def _full(self, items: int, cost: int) -> bool:
        return items >= self.max_batch_size or (self.max_batch_cost is not None and cost >= self.max_batch_cost)

    def _fits(self, items: int, cost: int) -> bool:
        return items <= self.max_batch_size and (self.max_batch_cost is None or cost <= self.max_batch_cost)

    def _take_batch(self) -> list[_Pending]:
        """The waiting ordinary requests, first come first, while they fit (the first one always does);
        with none waiting, bulk ones the same way, at most `max_bulk_items` items of them."""
        batch, size, cost = [], 0, 0
        for queue in (self._queue, self._bulk):
            if batch:  # ordinary work runs without bulk work in its tower call
                break
            while queue and (not batch or self._fits(size + len(queue[0].inputs), cost + queue[0].cost)):
                if queue is self._bulk and batch and self.max_bulk_items and size + len(queue[0].inputs) > self.max_bulk_items:
                    break
                item = queue.popleft()
                self._pending_items -= len(item.inputs)
                self._pending_cost -= item.cost
                if item.future.cancelled():  # the client went away
                    continue
                batch.append(item)
                size += len(item.inputs)
                cost += item.cost
        self._set_depth()
        return batch

    async def _wait_for_work(self, idle_since_run: bool) -> bool:
        """Wait for the next submission (or a finished tower call); once `idle_s` pass with neither after a
        tower call, and none running, run `on_idle` in a tower thread (once per idle spell). True when it ran."""
        if not idle_since_run or self.on_idle is None or self._running:
            await self._wakeup.wait()
            return False
        waiter = asyncio.ensure_future(self._wakeup.wait())
        done, _ = await asyncio.wait({waiter}, timeout=self.idle_s)
        if done:
            return False
        waiter.cancel()
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.on_idle)
        except Exception:  # a failed release must not stop the tower
            log.exception("%s tower: releasing idle memory failed", self.tower)
        return True

    async def _worker(self) -> None:
        ran = False  # a tower call since the last on_idle
        while not self._stopping:
            if await self._wait_for_work(ran):
                ran = False
                continue
            self._wakeup.clear()
            if (not self._queue and not self._bulk) or len(self._running) >= self.workers:
                continue  # nothing to do, or every tower thread busy: a finished call wakes this up
            deadline = (self._queue or self._bulk)[0].enqueued + self.max_wait_s
            while not self._full(self._pending_items, self._pending_cost) and (wait := deadline - time.perf_counter()) > 0:
                # asyncio.wait, not wait_for: wait_for can swallow a cancellation before Python 3.12
                waiter = asyncio.ensure_future(self._wakeup.wait())
                done, _ = await asyncio.wait({waiter}, timeout=wait)
                if not done:
                    waiter.cancel()
                    break
                self._wakeup.clear()
            batch = self._take_batch()
            if self._queue or self._bulk:
                self._wakeup.set()  # more waiting: next round starts at once
            if not batch:
                continue
            ran = True
            task = asyncio.get_running_loop().create_task(self._run_batch(batch), name=f"batch-{self.tower}")
            self._running.add(task)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        """One tower call on a tower thread; each request of the batch gets its rows (or the error)."""
        started = time.perf_counter()
        inputs = np.concatenate([b.inputs for b in batch], axis=0)
        if self.metrics:
            for b in batch:
                self.metrics.queue_wait.labels(self.tower).observe(started - b.enqueued)
            self.metrics.batch_size.labels(self.tower).observe(len(inputs))
        try:
            out = await asyncio.get_running_loop().run_in_executor(self._executor, self.run, inputs)
        except BaseException as err:  # a failing tower must not kill the worker; shutdown cancels
            if not isinstance(err, asyncio.CancelledError):
                log.exception("%s tower failed on a batch of %d", self.tower, len(inputs))
            for b in batch:
                if not b.future.done():
                    b.future.set_exception(err if isinstance(err, Exception) else RuntimeError("service is shutting down"))
            if not isinstance(err, Exception):
                raise
            return
        finally:
            self._running.discard(asyncio.current_task())
            self._wakeup.set()  # a tower thread is free
        if self.metrics:
            self.metrics.inference.labels(self.tower).observe(time.perf_counter() - started)
        start = 0
        for b in batch:
            rows = out[start : start + len(b.inputs)]
            start += len(b.inputs)
            if not b.future.done():
                b.future.set_result(rows)
