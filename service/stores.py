"""Class stores: named sets of class embeddings, computed once and kept in Redis plus an in-process cache.

Redis is the one source of truth. Keys carry the model's id AND weight fingerprint
(`pcclip:store:{model}:{fingerprint}:{name}`), so a different model (or the same name with new
weights) never sees stale embeddings. Each store is a hash: `meta` (JSON: classes, templates,
hints, alpha, ...) and `embeddings` (float32 bytes, [C, D]). The namespace
`pcclip:stores:{model}:{fingerprint}` holds the index and version keys of `service.coherence`,
which keeps every replica's cache coherent: a store PUT, replaced or deleted by any process is seen
by every other within `sync_interval_s` (listing and lookup alike), and a Redis that restarted
empty empties the caches too. At most `max_stores` stores per model (a new name past that is
refused), and at most `cache_size` of them cached per process (least recently used evicted).

Redis down: writes raise `StoreUnavailable` (503); reads (lookup and listing) are served from the
cache for at most `max_stale_s` after the last successful check, then raise it too. A monitor task
checks Redis every `check_interval_s` and flips `up` (and the `pcclip_redis_up` gauge); the client
reconnects by itself on the next command. Nothing is written while Redis is down, so nothing can be
lost; on the way back up the monitor re-checks the versions and drops what changed meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from service.coherence import REDIS_ERRORS, CoherentCache, NamespaceFull, RedisUnavailable
from service.metrics import ServiceMetrics

log = logging.getLogger(__name__)

STORE_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}\Z")  # \Z: "$" would let a trailing newline in


def valid_store_name(name: str) -> bool:
    """1-128 characters of letters, digits, '_', '.', '-', starting with a letter or digit (nothing else, no newline)."""
    return STORE_NAME.fullmatch(name) is not None


class StoreUnavailable(RuntimeError):
    """Redis is not reachable (writes, and reads the cache may not answer, must wait)."""


class TooManyStores(NamespaceFull):
    """A new store was refused: the model already has `limit` stores."""


@dataclass
class ClassStore:
    """Class embeddings [C, D] (templates, hints and alpha already applied) and how they were made."""

    name: str
    classes: list[str]
    templates: list[str]
    hints: list[dict]
    alpha: float
    embeddings: np.ndarray
    model: str
    fingerprint: str
    created_at: float = field(default_factory=time.time)

    def meta(self) -> dict:
        return {
            "name": self.name,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "classes": self.classes,
            "templates": self.templates,
            "hints": self.hints,
            "alpha": self.alpha,
            "dim": int(self.embeddings.shape[1]),
            "created_at": self.created_at,
        }

    def to_redis(self) -> dict[str, bytes]:
        return {
            "meta": json.dumps(self.meta()).encode(),
            "embeddings": np.ascontiguousarray(self.embeddings, dtype=np.float32).tobytes(),
        }

    @classmethod
    def from_redis(cls, data: dict[bytes, bytes]) -> "ClassStore":
        meta = json.loads(data[b"meta"])
        emb = np.frombuffer(data[b"embeddings"], dtype=np.float32).reshape(len(meta["classes"]), int(meta["dim"]))
        return cls(
            name=meta["name"],
            classes=list(meta["classes"]),
            templates=list(meta["templates"]),
            hints=list(meta["hints"]),
            alpha=float(meta["alpha"]),
            embeddings=emb.copy(),
            model=meta["model"],
            fingerprint=meta["fingerprint"],
            created_at=float(meta["created_at"]),
        )


class StoreRegistry:
    """Class stores of one model in Redis, with a coherent in-process cache in front."""

    def __init__(
        self,
        redis_url: str,
        model_id: str,
        fingerprint: str,
        metrics: ServiceMetrics,
        timeout_s: float = 0.5,
        check_interval_s: float = 1.0,
        sync_interval_s: float = 0.25,
        max_stale_s: float = 300.0,
        cache_size: int = 256,
        max_stores: int = 1000,
    ):
        self.redis_url = redis_url
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.check_interval_s = check_interval_s
        self.max_stores = int(max_stores)
        self.prefix = f"pcclip:store:{model_id}:{fingerprint}:"
        self.namespace = f"pcclip:stores:{model_id}:{fingerprint}"  # once a plain set of the names
        self.cache: CoherentCache[ClassStore] = CoherentCache(
            self.namespace, key_of=lambda name: self.prefix + name, decode=ClassStore.from_redis,
            max_entries=cache_size, sync_interval_s=sync_interval_s, max_stale_s=max_stale_s,
        )
        self.up = False
        self.last_error: str | None = None
        self._client: aioredis.Redis | None = None
        self._monitor: asyncio.Task | None = None
        self._watched: list[tuple[CoherentCache, Callable[[], Awaitable[None]]]] = []  # other namespaces on this connection

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect (a Redis that is down is not fatal), load the stores, start the monitor."""
        self._client = self.cache.client = aioredis.from_url(
            self.redis_url,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            # one retry, on a new connection, for a connection error only: after a Redis restart every
            # pooled connection is dead, and each would otherwise fail one command (a false "down");
            # a Redis that is really down refuses the new connection at once. Timeouts are not retried.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            retry_on_error=[],
        )
        await self.check()
        self._monitor = asyncio.get_running_loop().create_task(self._watch(), name="redis-monitor")

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.wait({self._monitor}, timeout=5.0)
        if self._client is not None:
            closing = asyncio.ensure_future(self._client.aclose())
            done, _ = await asyncio.wait({closing}, timeout=5.0)
            if not done or closing.exception() is not None:
                closing.cancel()
                log.warning("closing the redis client did not finish cleanly")

    def watch(self, cache: CoherentCache, on_up: Callable[[], Awaitable[None]]) -> None:
        """Check `cache` (another namespace on this connection, e.g. the collections) on every round
        too, and call `on_up` whenever Redis comes back."""
        cache.client = self._client
        self._watched.append((cache, on_up))

    async def check(self) -> bool:
        """Check Redis and the versions of the stores (and watched caches), update `up` and the
        gauge; on the way up, load the stores and call the watchers' `on_up`."""
        was_up = self.up
        try:
            for cache in (self.cache, *(watched for watched, _ in self._watched)):
                await cache.sync(force=True)
        except REDIS_ERRORS as err:
            self._mark_down(err)
            return False
        self.up = True
        self.last_error = None
        self.metrics.redis_up.set(1)
        if not was_up:
            log.info("redis is up")
            try:
                if adopted := await self.cache.adopt_legacy_index(self.namespace, self.prefix):
                    log.info("indexed %d class stores written by an older version", adopted)
                if loaded := await self.cache.warm():
                    log.info("loaded %d class stores from redis", loaded)
            except (RedisUnavailable, *REDIS_ERRORS) as err:
                self._mark_down(err)
            for _, on_up in self._watched:
                if self.up:
                    await on_up()
        return self.up

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            await self.check()

    def _mark_down(self, err: Exception) -> None:
        if self.up or self.last_error is None:
            log.warning("redis is down: %s", err)
        self.up = False
        self.last_error = f"{type(err).__name__}: {err}"
        self.metrics.redis_up.set(0)

    def _safe_url(self) -> str:
        """The Redis URL without its password (for logs and the CLI; /readyz shows no address)."""
        return re.sub(r"//[^@/]*@", "//***@", self.redis_url)

    def _unavailable(self, what: str) -> StoreUnavailable:
        return StoreUnavailable(f"class store {what} is unavailable: Redis is not reachable; retry shortly")

    # -- operations -------------------------------------------------------------------------
    async def get(self, name: str) -> ClassStore | None:
        """The store, from the cache or Redis; None if it does not exist. Raises StoreUnavailable."""
        try:
            store, source = await self.cache.get(name, offline=not self.up)
        except RedisUnavailable as err:
            if self.up:
                self._mark_down(err)
            self.metrics.store_lookups.labels("unavailable").inc()
            raise self._unavailable(repr(name)) from err
        if source == "stale_cache" and self.up:
            self._mark_down(RedisUnavailable("a store lookup could not reach Redis"))
        result = {"cache": "cache_hit", "stale_cache": "stale_cache_hit", "redis": "redis_hit"}[source]
        self.metrics.store_lookups.labels(result if store is not None else "not_found").inc()
        return store

    async def put(self, store: ClassStore) -> None:
        """Write to Redis (AOF-persisted there), then to the cache. Raises StoreUnavailable, TooManyStores."""
        try:
            await self._write("put", store.name, self.cache.put_hash(store.name, store.to_redis(), store, limit=self.max_stores))
        except NamespaceFull as err:
            self.metrics.store_writes.labels("put", "too_many").inc()
            raise TooManyStores(err.limit) from None

    async def delete(self, name: str) -> bool:
        """Delete a store; True if it existed. Raises StoreUnavailable."""
        return await self._write("delete", name, self.cache.delete(name))

    async def names(self) -> tuple[list[str], str]:
        """(store names, source "redis" | "stale_cache"). Raises StoreUnavailable."""
        try:
            names, source = await self.cache.names(offline=not self.up)
        except RedisUnavailable as err:
            if self.up:
                self._mark_down(err)
            raise self._unavailable("listing") from err
        return names, source

    def ensure_writable(self, name: str) -> None:
        """Raise StoreUnavailable now (before any encoding) when Redis is known to be down."""
        if not self.up:
            raise self._unavailable(f"write (put {name!r})")

    async def _write(self, op: str, name: str, write):
        if not self.up:
            write.close()
            self.metrics.store_writes.labels(op, "unavailable").inc()
            raise self._unavailable(f"write ({op} {name!r})")
        try:
            result = await write
        except REDIS_ERRORS as err:
            self._mark_down(err)
            self.metrics.store_writes.labels(op, "unavailable").inc()
            raise self._unavailable(f"write ({op} {name!r})") from err
        self.metrics.store_writes.labels(op, "ok").inc()
        return result
