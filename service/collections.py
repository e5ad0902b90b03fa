"""Collections: named sets of embedded items (id, vector, JSON metadata) in Redis, searched in process.

Redis is the source of truth, shared by every replica; each replica keeps an index (`make_index`: the
matrix) per collection, kept coherent by `service.coherence` (the class stores' mechanism, in its
own namespace):

    pcclip:coll:{model}:{fingerprint}:{name}:meta             hash: uid, name, dim, created_at, description
    pcclip:coll:{model}:{fingerprint}:{name}:vec              hash: item id -> float32 vector bytes
    pcclip:coll:{model}:{fingerprint}:{name}:md               hash: item id -> metadata JSON (items with metadata)
    pcclip:collections:{model}:{fingerprint}:generations      the names, each with its generation
    pcclip:collections:{model}:{fingerprint}:{clock,epoch}    the namespace's write clock and epoch
    pcclip:collections:{model}:{fingerprint}:changes:{name}   stream: one entry per write {gen, prev, changed ids}

Every write is one Lua script (atomic; persisted by Redis's AOF) made by
`coherence.versioned_script`: it changes the hashes, moves the collection's generation and appends
the ids it touched to the change log. Every read first checks (epoch, clock), one round trip
(`sync_interval_s` 0: a replica sees another's writes on its next request): unchanged -> the
replica's copy is current; moved -> the generations tell which collections changed, and a changed
one re-reads just the ids its log names (`HMGET`); a gap in the log (trimmed, or the collection
deleted and made again) or another epoch (Redis came back empty) -> it is reloaded whole or gone.

Redis down: reads are answered from the replica's copy (collections it has loaded) for at most
`max_stale_s` after the last successful check, as for class stores; writes raise
`CollectionUnavailable` (503) before anything is changed, so nothing is lost or half-written.
The Redis connection and its up/down monitor are the class stores' (`StoreRegistry`), which also
checks this namespace on every round.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from service.coherence import REDIS_ERRORS, CoherentCache, RedisUnavailable, versioned_script
from service.metrics import ServiceMetrics
from service.stores import StoreRegistry, StoreUnavailable
from service.vector_index import ExactIndex, Hit, Int8Index, Query, RingScan, _View, index_kind, make_index

log = logging.getLogger(__name__)

LOAD_BATCH = 4096

# K: meta. A: uid, name, dim, created_at, description
_CREATE = versioned_script("""
if redis.call('EXISTS', K[1]) == 1 then return 0, false end
redis.call('HSET', K[1], 'uid', A[1], 'name', A[2], 'dim', A[3], 'created_at', A[4], 'description', A[5])
return 1, '[]'
""")

# K: meta, vec, md. A: uid, ids JSON, then (id, vector, metadata or '') per item
_ADD = versioned_script("""
if redis.call('HGET', K[1], 'uid') ~= A[1] then return -1, false end
for i = 3, #A, 3 do
  redis.call('HSET', K[2], A[i], A[i + 1])
  if A[i + 2] == '' then redis.call('HDEL', K[3], A[i]) else redis.call('HSET', K[3], A[i], A[i + 2]) end
end
return 1, A[2]
""")

# K: meta, vec, md. A: uid, ids JSON, then the ids
_REMOVE = versioned_script("""
if redis.call('HGET', K[1], 'uid') ~= A[1] then return -1, false end
local removed = 0
for i = 3, #A do
  removed = removed + redis.call('HDEL', K[2], A[i])
  redis.call('HDEL', K[3], A[i])
end
if removed == 0 then return 0, false end
return removed, A[2]
""")


class CollectionUnavailable(StoreUnavailable):
    """Redis is not reachable: collection writes (and reads of collections not cached) must wait."""


class CollectionGone(LookupError):
    """The collection was deleted (by this or another replica) while a write was under way."""


@dataclass
class Collection:
    """One collection as this replica holds it: description, index, and how far it has read the log."""

    name: str
    uid: str
    dim: int
    created_at: float
    description: str
    index: ExactIndex
    pending: list = field(default_factory=list)
    searching: bool = False
    loaded_in_s: float = 0.0

    def info(self, model: str, fingerprint: str) -> dict:
        return {
            "name": self.name, "model": model, "fingerprint": fingerprint, "dim": self.dim, "count": len(self.index),
            "created_at": self.created_at, "description": self.description, "dtype": np.dtype(self.index.dtype).name,
            "index": index_kind(self.index),
        }


class CollectionRegistry:
    """The collections of one model (id + fingerprint): Redis storage, per-replica indexes, batched search."""

    def __init__(self, stores: StoreRegistry, model_id: str, fingerprint: str, metrics: ServiceMetrics,
                 dtype: str = "float32", log_length: int = 10_000, max_stale_s: float | None = None, index: str = "int8"):
        self.stores = stores  # the Redis connection and its up/down state
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.metrics = metrics
        self.dtype = dtype
        self.index_kind = index  # `make_index` kind: "int8" or "flat"
        self.log_length = int(log_length)
        self.prefix = f"pcclip:coll:{model_id}:{fingerprint}:"
        self.namespace = f"pcclip:collections:{model_id}:{fingerprint}"  # once a plain set of the names
        self.cache: CoherentCache[Collection] = CoherentCache(
            self.namespace, key_of=lambda name: self._keys(name)[0], load=self._load, catch_up=self._reread,
            max_entries=sys.maxsize,  # every collection stays loaded (a reload reads all its items)
            sync_interval_s=0.0,  # every read checks: a write through one replica is seen by the next request to any
            max_stale_s=stores.cache.max_stale_s if max_stale_s is None else max_stale_s,
        )
        self.cache.client = stores._client

    # -- plumbing --------------------------------------------------------------------------------
    @property
    def client(self):
        return self.stores._client

    @property
    def up(self) -> bool:
        return self.stores.up

    def collections(self) -> list[Collection]:
        """The collections this replica holds."""
        return self.cache.cached_values()

    def _keys(self, name: str) -> tuple[str, str, str]:
        base = self.prefix + name
        return base + ":meta", base + ":vec", base + ":md"

    def _unavailable(self, what: str) -> CollectionUnavailable:
        return CollectionUnavailable(f"collection {what} is unavailable: Redis is not reachable ({self.stores.last_error}); retry shortly")

    async def _write(self, what: str, script: str, name: str, args: list, apply=None):
        """Run a write script (`apply`: the same change to the cached collection, see `CoherentCache.write`);
        on a connection error mark Redis down and raise CollectionUnavailable."""
        if not self.up:
            raise self._unavailable(what)
        try:
            return await self.cache.write(script, name, list(self._keys(name)), args, self.log_length, apply=apply)
        except REDIS_ERRORS as err:
            self.stores._mark_down(err)
            raise self._unavailable(what) from err

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> float:
        """Load every collection of the model into this replica (when Redis is up); returns the seconds taken.

        From here on the stores' monitor checks this namespace too, and loads the collections
        again whenever Redis comes back.
        """
        started = time.perf_counter()
        self.stores.watch(self.cache, self._on_redis_up)
        if self.up:
            await self._on_redis_up()
        took = time.perf_counter() - started
        if len(self.cache):
            log.info("loaded %d collections (%d items) from redis in %.2f s", len(self.cache),
                     sum(len(c.index) for c in self.collections()), took)
        return took

    async def _on_redis_up(self) -> None:
        try:
            if adopted := await self.cache.adopt_legacy_index(self.namespace, self.prefix, ":meta"):
                log.info("indexed %d collections written by an older version", adopted)
            await self.cache.warm()
        except (RedisUnavailable, *REDIS_ERRORS) as err:
            log.warning("collections not loaded (%s); they load on first use", err)

    # -- collections -----------------------------------------------------------------------------
    async def names(self) -> list[str]:
        """Collection names (from the replica's last check while Redis is down). Raises CollectionUnavailable."""
        try:
            names, _ = await self.cache.names(offline=not self.up)
        except RedisUnavailable as err:
            if self.up:
                self.stores._mark_down(err)
            raise self._unavailable("listing") from err
        return names

    async def create(self, name: str, dim: int, description: str = "") -> tuple[Collection, bool]:
        """Create the collection unless it exists; (collection, created)."""
        written = await self._write(f"write (create {name!r})", _CREATE, name,
                                    [uuid.uuid4().hex, name, int(dim), repr(time.time()), description or ""])
        self.metrics.collection_writes.labels("create", "ok").inc()
        coll = await self.get(name)
        if coll is None:  # deleted again in between
            raise CollectionGone(name)
        return coll, bool(written.generation)

    async def delete(self, name: str) -> bool:
        """Delete a collection and its items; True if it existed."""
        if not self.up:
            raise self._unavailable(f"write (delete {name!r})")
        try:  # the keys of the change log before this mechanism (`:log`) go too
            existed = await self.cache.delete(name, extra_keys=(*self._keys(name)[1:], self.prefix + name + ":log"))
        except REDIS_ERRORS as err:
            self.stores._mark_down(err)
            raise self._unavailable(f"write (delete {name!r})") from err
        self.metrics.collection_writes.labels("delete", "ok").inc()
        return existed

    async def get(self, name: str) -> Collection | None:
        """The collection, brought up to date with Redis (one round trip when nothing changed).

        Redis down: the cached copy as it is, for at most `max_stale_s`. Raises CollectionUnavailable.
        """
        try:
            coll, source = await self.cache.get(name, offline=not self.up)
        except RedisUnavailable as err:
            if self.up:
                self.stores._mark_down(err)
            raise self._unavailable(repr(name) if self.cache.cached(name) is not None else f"{name!r} (not in this replica's cache)") from err
        if source == "stale_cache" and self.up:
            self.stores._mark_down(RedisUnavailable("a collection read could not reach Redis"))
        result = {"cache": "current", "caught_up": "caught_up", "redis": "loaded", "stale_cache": "cache_stale_ok"}[source]
        self.metrics.collection_lookups.labels(result if coll is not None else "not_found").inc()
        return coll

    async def _reread(self, coll: Collection, ids: list[str]) -> None:
        """Re-read `ids` from Redis into the index: present ones upserted, absent ones removed."""
        _, vec_key, md_key = self._keys(coll.name)
        for start in range(0, len(ids), LOAD_BATCH):
            chunk = ids[start : start + LOAD_BATCH]
            async with self.client.pipeline(transaction=True) as pipe:
                vectors, metadata = await pipe.hmget(vec_key, chunk).hmget(md_key, chunk).execute()
            present = [i for i, v in enumerate(vectors) if v is not None]
            coll.index.remove([chunk[i] for i, v in enumerate(vectors) if v is None])
            if present:
                coll.index.upsert(
                    [chunk[i] for i in present],
                    np.stack([np.frombuffer(vectors[i], dtype="<f4") for i in present]),
                    [json.loads(metadata[i]) if metadata[i] else None for i in present],
                )

    async def _load(self, name: str) -> Collection | None:
        """Read a whole collection from Redis into a new index (writes made meanwhile come from the log)."""
        started = time.perf_counter()
        meta_key, vec_key, md_key = self._keys(name)
        async with self.client.pipeline(transaction=True) as pipe:
            meta, count, with_metadata = await pipe.hgetall(meta_key).hlen(vec_key).hlen(md_key).execute()
        if not meta:
            return None
        meta = {k.decode(): v.decode() for k, v in meta.items()}
        dim = int(meta["dim"])
        coll = Collection(
            name=name, uid=meta["uid"], dim=dim, created_at=float(meta["created_at"]), description=meta.get("description", ""),
            index=make_index(self.index_kind, dim, self.dtype, capacity=max(1, int(count))),
        )
        cursor = 0
        while True:
            cursor, chunk = await self.client.hscan(vec_key, cursor, count=LOAD_BATCH)
            if chunk:
                ids = [k.decode() for k in chunk]
                metadata = [None] * len(ids)
                if with_metadata:
                    metadata = [json.loads(m) if m else None for m in await self.client.hmget(md_key, ids)]
                coll.index.upsert(ids, np.frombuffer(b"".join(chunk.values()), dtype="<f4").reshape(len(ids), dim), metadata)
            if cursor == 0:
                break
        coll.loaded_in_s = time.perf_counter() - started
        return coll

    # -- items -----------------------------------------------------------------------------------
    async def add(self, coll: Collection, ids: list[str], vectors: np.ndarray, metadata: list[dict | None], refresh: bool = True) -> None:
        """Store items (replacing same ids) in Redis, then (`refresh`) bring this replica's index up to date:
        in process when it held the collection as it was just before this write, else from the change log."""
        args: list = [coll.uid, json.dumps(ids)]
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        stored_metadata = [json.dumps(md) if md else "" for md in metadata]
        for item_id, vec, md in zip(ids, vectors, stored_metadata):
            args += [item_id, vec.tobytes(), md]

        def apply(cached: Collection) -> None:  # what re-reading the written items would give
            cached.index.upsert(ids, vectors, [json.loads(md) if md else None for md in stored_metadata])

        written = await self._write(f"write (add to {coll.name!r})", _ADD, coll.name, args, apply if refresh else None)
        if int(written.result) < 0:
            raise CollectionGone(coll.name)
        self.metrics.collection_writes.labels("add", "ok").inc(len(ids))
        if refresh and not written.applied:
            await self._after_write(coll.name)

    async def remove(self, coll: Collection, ids: list[str]) -> int:
        """Delete items by id; returns how many existed."""
        written = await self._write(f"write (delete items of {coll.name!r})", _REMOVE, coll.name, [coll.uid, json.dumps(ids), *ids])
        removed = int(written.result)
        if removed < 0:
            raise CollectionGone(coll.name)
        self.metrics.collection_writes.labels("remove", "ok").inc(removed)
        await self._after_write(coll.name)
        return removed

    async def _after_write(self, name: str) -> None:
        """Bring this replica's copy up to date (written already: a failure here only delays that)."""
        try:
            await self.cache.get(name)
        except RedisUnavailable as err:
            self.stores._mark_down(err)

    # -- search ----------------------------------------------------------------------------------
    async def search(self, coll: Collection, view: _View, queries: list[Query]) -> list[list[Hit]]:
        """Top-k hits per query. Concurrent searches of a collection share its passes: one float pass
        for all waiting queries, or (`Int8Index`, large collections) a `RingScan` they join between segments."""
        future = asyncio.get_running_loop().create_future()
        coll.pending.append((view, queries, future))
        if not coll.searching:
            coll.searching = True
            asyncio.get_running_loop().create_task(self._drain(coll))
        return await future

    async def _drain(self, coll: Collection) -> None:
        ring = coll.index.ring_scan() if isinstance(coll.index, Int8Index) else None
        joined: dict[int, float] = {}  # id(future) -> when it joined the ring
        try:
            while coll.pending or (ring is not None and ring.active):
                batch, coll.pending = coll.pending, []
                groups: dict[int, tuple[_View, list]] = {}
                for view, queries, future in batch:
                    if ring is not None and ring.accepts(view):
                        ring.add(view, queries, future)
                        joined[id(future)] = time.perf_counter()
                    else:
                        groups.setdefault(id(view), (view, []))[1].append((queries, future))
                for view, items in groups.values():
                    await self._float_pass(coll, view, items)
                if ring is not None and ring.active:
                    await self._ring_step(ring, joined)
        finally:
            coll.searching = False

    async def _float_pass(self, coll: Collection, view: _View, items: list) -> None:
        """One pass over the view for the queries of every waiting request in `items` ((queries, future) pairs)."""
        flat = [q for queries, _ in items for q in queries]
        started = time.perf_counter()
        try:
            hits = await asyncio.to_thread(coll.index.search, flat, view)
        except Exception as err:  # noqa: BLE001 - handed to the waiting requests
            for _, future in items:
                if not future.done():
                    future.set_exception(err)
            return
        self.metrics.collection_search.observe(time.perf_counter() - started)
        self.metrics.collection_queries_per_pass.observe(len(flat))
        offset = 0
        for queries, future in items:
            if not future.done():
                future.set_result(hits[offset : offset + len(queries)])
            offset += len(queries)

    async def _ring_step(self, ring: RingScan, joined: dict[int, float]) -> None:
        """One segment of the ring scan; the requests that have seen every segment get their hits."""
        self.metrics.collection_queries_per_pass.observe(sum(len(r.queries) for r in ring.active))
        try:
            finished = await asyncio.to_thread(ring.step)
        except Exception as err:  # noqa: BLE001 - handed to the requests in the ring
            for r in ring.active:
                if not r.token.done():
                    r.token.set_exception(err)
            ring.active.clear()
            return
        for future, hits in finished:
            self.metrics.collection_search.observe(time.perf_counter() - joined.pop(id(future)))
            if not future.done():
                future.set_result(hits)
