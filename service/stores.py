"""Class stores: named sets of class embeddings, computed once and kept in Redis plus an in-process cache.

Redis keys carry the model's id AND weight fingerprint (`pcclip:store:{model}:{fingerprint}:{name}`),
so a different model (or the same name with new weights) never sees stale embeddings. Each store is
a hash: `meta` (JSON: classes, templates, hints, alpha, ...) and `embeddings` (float32 bytes, [C, D]);
a set `pcclip:stores:{model}:{fingerprint}` lists the names.

Redis down: reads are served from the in-process cache, writes raise `StoreUnavailable` (503), a
monitor task pings Redis every `check_interval_s` and flips `up` (and the `pcclip_redis_up`
gauge); the client reconnects by itself on the next command. Nothing is written while Redis is
down, so nothing can be lost; on the way back up the monitor reloads the stores into the cache.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field

import numpy as np
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from service.metrics import ServiceMetrics

log = logging.getLogger(__name__)

STORE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class StoreUnavailable(RuntimeError):
    """Redis is not reachable (writes, and reads of stores not in the cache, must wait)."""


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
    """Class stores of one model in Redis, with an in-process cache in front."""

    def __init__(
        self,
        redis_url: str,
        model_id: str,
        fingerprint: str,
        metrics: ServiceMetrics,
        timeout_s: float = 0.5,
        check_interval_s: float = 1.0,
    ):
        self.redis_url = redis_url
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.check_interval_s = check_interval_s
        self.prefix = f"pcclip:store:{model_id}:{fingerprint}:"
        self.index_key = f"pcclip:stores:{model_id}:{fingerprint}"
        self.cache: dict[str, ClassStore] = {}
        self.up = False
        self.last_error: str | None = None
        self._client: aioredis.Redis | None = None
        self._monitor: asyncio.Task | None = None

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect (a Redis that is down is not fatal), load the stores, start the monitor."""
        self._client = aioredis.from_url(
            self.redis_url,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0),
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

    async def check(self) -> bool:
        """Ping Redis, update `up` and the gauge; on the way up, load the stores into the cache."""
        was_up = self.up
        try:
            await self._client.ping()
        except (RedisError, OSError) as err:
            self._mark_down(err)
            return False
        self.up = True
        self.last_error = None
        self.metrics.redis_up.set(1)
        if not was_up:
            log.info("redis at %s is up", self._safe_url())
            try:
                await self._load_all()
            except (RedisError, OSError) as err:
                self._mark_down(err)
        return self.up

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            await self.check()

    def _mark_down(self, err: Exception) -> None:
        if self.up or self.last_error is None:
            log.warning("redis at %s is down: %s", self._safe_url(), err)
        self.up = False
        self.last_error = f"{type(err).__name__}: {err}"
        self.metrics.redis_up.set(0)

    def _safe_url(self) -> str:
        return re.sub(r"//[^@/]*@", "//***@", self.redis_url)

    def _unavailable(self, what: str) -> StoreUnavailable:
        return StoreUnavailable(f"class store {what} is unavailable: Redis is not reachable ({self.last_error}); retry shortly")

    async def _load_all(self) -> None:
        names = sorted(n.decode() for n in await self._client.smembers(self.index_key))
        for name in names:
            if name not in self.cache:
                data = await self._client.hgetall(self.prefix + name)
                if data:
                    self.cache[name] = ClassStore.from_redis(data)
        if names:
            log.info("loaded %d class stores from redis", len(names))

    # -- operations -------------------------------------------------------------------------
    async def get(self, name: str) -> ClassStore | None:
        """The store, from the cache or Redis; None if it does not exist. Raises StoreUnavailable."""
        store = self.cache.get(name)
        if store is not None:
            self.metrics.store_lookups.labels("cache_hit").inc()
            return store
        if not self.up:
            self.metrics.store_lookups.labels("unavailable").inc()
            raise self._unavailable(f"{name!r} (not in the in-process cache)")
        try:
            data = await self._client.hgetall(self.prefix + name)
        except (RedisError, OSError) as err:
            self._mark_down(err)
            raise self._unavailable(repr(name)) from err
        if not data:
            self.metrics.store_lookups.labels("not_found").inc()
            return None
        store = self.cache[name] = ClassStore.from_redis(data)
        self.metrics.store_lookups.labels("redis_hit").inc()
        return store

    async def put(self, store: ClassStore) -> None:
        """Write to Redis (AOF-persisted there), then to the cache. Raises StoreUnavailable."""
        await self._write("put", store.name, lambda pipe: pipe.delete(self.prefix + store.name).hset(self.prefix + store.name, mapping=store.to_redis()).sadd(self.index_key, store.name))
        self.cache[store.name] = store

    async def delete(self, name: str) -> bool:
        """Delete a store; True if it existed. Raises StoreUnavailable."""
        results = await self._write("delete", name, lambda pipe: pipe.delete(self.prefix + name).srem(self.index_key, name))
        existed = bool(results[0]) or self.cache.pop(name, None) is not None
        self.cache.pop(name, None)
        return existed

    async def names(self) -> tuple[list[str], str]:
        """(store names, source): from Redis when it is up, else from the cache."""
        if self.up:
            try:
                return sorted(n.decode() for n in await self._client.smembers(self.index_key)), "redis"
            except (RedisError, OSError) as err:
                self._mark_down(err)
        return sorted(self.cache), "cache"

    async def _write(self, op: str, name: str, build):
        if not self.up:
            self.metrics.store_writes.labels(op, "unavailable").inc()
            raise self._unavailable(f"write ({op} {name!r})")
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                results = await build(pipe).execute()
        except (RedisError, OSError) as err:
            self._mark_down(err)
            self.metrics.store_writes.labels(op, "unavailable").inc()
            raise self._unavailable(f"write ({op} {name!r})") from err
        self.metrics.store_writes.labels(op, "ok").inc()
        return results
