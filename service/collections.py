"""Collections: named sets of embedded items (id, vector, JSON metadata) in Redis, searched in process.

Redis is the source of truth, shared by every replica; each replica keeps an `ExactIndex` (the
matrix) per collection and keeps it in step through a per-collection change log:

    pcclip:coll:{model}:{fingerprint}:{name}:meta   hash: uid, name, dim, created_at, description, seq
    pcclip:coll:{model}:{fingerprint}:{name}:vec    hash: item id -> float32 vector bytes
    pcclip:coll:{model}:{fingerprint}:{name}:md     hash: item id -> metadata JSON (items with metadata)
    pcclip:coll:{model}:{fingerprint}:{name}:log    stream: one entry per write {seq, ids}
    pcclip:collections:{model}:{fingerprint}        set of collection names

Every write is one Lua script (atomic; persisted by Redis's AOF): it changes the hashes, bumps
`seq` and appends the ids it touched to the log. Every read first asks Redis for (uid, seq), one
round trip: same seq -> the cache is current; larger -> the replica reads the new log entries and
re-reads just those ids (`HMGET`); a gap in the log (trimmed) or another uid (the collection was
deleted and made again) -> full reload. So a replica sees another's writes on its next request.

Redis down: reads are answered from the replica's cache (collections it has loaded), writes raise
`CollectionUnavailable` (503) before anything is changed, so nothing is lost or half-written.
The Redis connection and its up/down monitor are the class stores' (`StoreRegistry`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
from redis.exceptions import RedisError

from service.metrics import ServiceMetrics
from service.stores import StoreRegistry, StoreUnavailable
from service.vector_index import ExactIndex, Hit, Query, _View

log = logging.getLogger(__name__)

LOAD_BATCH = 4096

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'uid', ARGV[1], 'name', ARGV[2], 'dim', ARGV[3], 'created_at', ARGV[4], 'description', ARGV[5], 'seq', 0)
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""

# KEYS: meta, vec, md, log. ARGV: uid, log length, ids JSON, then (id, vector, metadata or '') per item
_ADD = """
if redis.call('HGET', KEYS[1], 'uid') ~= ARGV[1] then return {-1, ''} end
for i = 4, #ARGV, 3 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  if ARGV[i + 2] == '' then redis.call('HDEL', KEYS[3], ARGV[i]) else redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2]) end
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'seq', seq, 'ids', ARGV[3])
return {seq, id}
"""

# KEYS: meta, vec, md, log. ARGV: uid, log length, ids JSON, then the ids
_REMOVE = """
if redis.call('HGET', KEYS[1], 'uid') ~= ARGV[1] then return {-1, '', 0} end
local removed = 0
for i = 4, #ARGV do
  removed = removed + redis.call('HDEL', KEYS[2], ARGV[i])
  redis.call('HDEL', KEYS[3], ARGV[i])
end
if removed == 0 then return {0, '', 0} end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'seq', seq, 'ids', ARGV[3])
return {seq, id, removed}
"""


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
    seq: int = 0
    log_id: str = "0-0"
    pending: list = field(default_factory=list)
    searching: bool = False
    loaded_in_s: float = 0.0

    def info(self, model: str, fingerprint: str) -> dict:
        return {
            "name": self.name, "model": model, "fingerprint": fingerprint, "dim": self.dim, "count": len(self.index),
            "created_at": self.created_at, "description": self.description, "dtype": np.dtype(self.index.dtype).name,
        }


class CollectionRegistry:
    """The collections of one model (id + fingerprint): Redis storage, per-replica indexes, batched search."""

    def __init__(self, stores: StoreRegistry, model_id: str, fingerprint: str, metrics: ServiceMetrics,
                 dtype: str = "float32", log_length: int = 10_000):
        self.stores = stores  # the Redis connection and its up/down state
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.metrics = metrics
        self.dtype = dtype
        self.log_length = int(log_length)
        self.prefix = f"pcclip:coll:{model_id}:{fingerprint}:"
        self.index_key = f"pcclip:collections:{model_id}:{fingerprint}"
        self.cache: dict[str, Collection] = {}
        self._scripts: dict[str, object] = {}
        self._locks: dict[str, asyncio.Lock] = {}  # one per collection: loads and log catch-ups

    # -- plumbing --------------------------------------------------------------------------------
    @property
    def client(self):
        return self.stores._client

    @property
    def up(self) -> bool:
        return self.stores.up

    def _keys(self, name: str) -> tuple[str, str, str, str]:
        base = self.prefix + name
        return base + ":meta", base + ":vec", base + ":md", base + ":log"

    def _unavailable(self, what: str) -> CollectionUnavailable:
        return CollectionUnavailable(f"collection {what} is unavailable: Redis is not reachable ({self.stores.last_error}); retry shortly")

    def _script(self, source: str):
        if source not in self._scripts:
            self._scripts[source] = self.client.register_script(source)
        return self._scripts[source]

    async def _redis(self, what: str, coro_fn):
        """Run a Redis call; on a connection error mark Redis down and raise CollectionUnavailable."""
        if not self.up:
            raise self._unavailable(what)
        try:
            return await coro_fn()
        except (RedisError, OSError) as err:
            self.stores._mark_down(err)
            raise self._unavailable(what) from err

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> float:
        """Load every collection of the model into this replica (when Redis is up); returns the seconds taken."""
        started = time.perf_counter()
        if self.up:
            try:
                for name in sorted(n.decode() for n in await self.client.smembers(self.index_key)):
                    await self.get(name)
            except (RedisError, OSError, CollectionUnavailable) as err:
                log.warning("collections not loaded at start-up (%s); they load on first use", err)
        took = time.perf_counter() - started
        if self.cache:
            log.info("loaded %d collections (%d items) from redis in %.2f s", len(self.cache),
                     sum(len(c.index) for c in self.cache.values()), took)
        return took

    # -- collections -----------------------------------------------------------------------------
    async def names(self) -> list[str]:
        """Collection names: from Redis when it is up, else from the cache."""
        if self.up:
            try:
                return sorted(n.decode() for n in await self.client.smembers(self.index_key))
            except (RedisError, OSError) as err:
                self.stores._mark_down(err)
        return sorted(self.cache)

    async def create(self, name: str, dim: int, description: str = "") -> tuple[Collection, bool]:
        """Create the collection unless it exists; (collection, created)."""
        meta_key = self._keys(name)[0]
        uid = uuid.uuid4().hex
        created = await self._redis(f"write (create {name!r})", lambda: self._script(_CREATE)(
            keys=[meta_key, self.index_key], args=[uid, name, int(dim), repr(time.time()), description or ""]))
        self.metrics.collection_writes.labels("create", "ok").inc()
        coll = await self.get(name)
        if coll is None:  # deleted again in between
            raise CollectionGone(name)
        return coll, bool(created)

    async def delete(self, name: str) -> bool:
        """Delete a collection and its items; True if it existed."""
        async def run():
            async with self.client.pipeline(transaction=True) as pipe:
                return await pipe.unlink(*self._keys(name)).srem(self.index_key, name).execute()

        results = await self._redis(f"write (delete {name!r})", run)
        self.cache.pop(name, None)
        self.metrics.collection_writes.labels("delete", "ok").inc()
        return bool(results[0])

    async def get(self, name: str) -> Collection | None:
        """The collection, brought up to date with Redis (one round trip when nothing changed).

        Redis down: the cached copy as it is (None is answered as CollectionUnavailable).
        """
        coll = self.cache.get(name)
        if not self.up:
            if coll is None:
                raise self._unavailable(f"{name!r} (not in this replica's cache)")
            self.metrics.collection_lookups.labels("cache_stale_ok").inc()
            return coll
        try:
            return await self._refresh(name)
        except (RedisError, OSError) as err:
            self.stores._mark_down(err)
            if coll is None:
                raise self._unavailable(repr(name)) from err
            return coll

    async def _refresh(self, name: str) -> Collection | None:
        meta_key, _, _, log_key = self._keys(name)
        uid, seq = await self.client.hmget(meta_key, ["uid", "seq"])
        if uid is None:
            self.cache.pop(name, None)
            self.metrics.collection_lookups.labels("not_found").inc()
            return None
        uid, seq = uid.decode(), int(seq)
        coll = self.cache.get(name)
        if coll is not None and coll.uid == uid and coll.seq >= seq:
            self.metrics.collection_lookups.labels("current").inc()
            return coll
        async with self._locks.setdefault(name, asyncio.Lock()):
            coll = self.cache.get(name)
            if coll is None or coll.uid != uid:
                coll = await self._load(name)
            while coll is not None:  # read the log past what this replica has applied
                raw = await self.client.xrange(log_key, min="(" + coll.log_id, max="+", count=1000)
                if not raw:
                    break
                entries = [e for e in raw if int(e[1][b"seq"]) > coll.seq]
                if not entries:  # applied already (by a reload)
                    coll.log_id = raw[-1][0].decode()
                    continue
                if int(entries[0][1][b"seq"]) != coll.seq + 1:  # entries were trimmed away: start over
                    coll = await self._load(name)
                    continue
                ids = sorted({i for _, fields in entries for i in json.loads(fields[b"ids"])})
                await self._reread(coll, ids)
                coll.seq = int(entries[-1][1][b"seq"])
                coll.log_id = entries[-1][0].decode()
                self.metrics.collection_lookups.labels("caught_up").inc()
            return coll

    async def _reread(self, coll: Collection, ids: list[str]) -> None:
        """Re-read `ids` from Redis into the index: present ones upserted, absent ones removed."""
        _, vec_key, md_key, _ = self._keys(coll.name)
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
        """Read a whole collection from Redis into a new index (then the log catches it up)."""
        started = time.perf_counter()
        meta_key, vec_key, md_key, log_key = self._keys(name)
        async with self.client.pipeline(transaction=True) as pipe:
            meta, last, count = await pipe.hgetall(meta_key).xrevrange(log_key, count=1).hlen(vec_key).execute()
        if not meta:
            self.cache.pop(name, None)
            return None
        meta = {k.decode(): v.decode() for k, v in meta.items()}
        dim = int(meta["dim"])
        coll = Collection(
            name=name, uid=meta["uid"], dim=dim, created_at=float(meta["created_at"]), description=meta.get("description", ""),
            index=ExactIndex(dim, self.dtype, capacity=max(1, int(count))), seq=int(meta["seq"]),
            log_id=last[0][0].decode() if last else "0-0",
        )
        has_metadata = bool(await self.client.hlen(md_key))
        cursor = 0
        while True:
            cursor, chunk = await self.client.hscan(vec_key, cursor, count=LOAD_BATCH)
            if chunk:
                ids = [k.decode() for k in chunk]
                metadata = [None] * len(ids)
                if has_metadata:
                    metadata = [json.loads(m) if m else None for m in await self.client.hmget(md_key, ids)]
                coll.index.upsert(ids, np.frombuffer(b"".join(chunk.values()), dtype="<f4").reshape(len(ids), dim), metadata)
            if cursor == 0:
                break
        coll.loaded_in_s = time.perf_counter() - started
        self.cache[name] = coll
        self.metrics.collection_lookups.labels("loaded").inc()
        return coll  # writes made during the scan are in the log after `log_id`: the caller applies them

    # -- items -----------------------------------------------------------------------------------
    async def add(self, coll: Collection, ids: list[str], vectors: np.ndarray, metadata: list[dict | None], refresh: bool = True) -> None:
        """Store items (replacing same ids) in Redis, then (`refresh`) bring this replica's index up to date."""
        meta_key, vec_key, md_key, log_key = self._keys(coll.name)
        args: list = [coll.uid, self.log_length, json.dumps(ids)]
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        for item_id, vec, md in zip(ids, vectors, metadata):
            args += [item_id, vec.tobytes(), json.dumps(md) if md else ""]
        result = await self._redis(f"write (add to {coll.name!r})", lambda: self._script(_ADD)(keys=[meta_key, vec_key, md_key, log_key], args=args))
        if int(result[0]) < 0:
            self.cache.pop(coll.name, None)
            raise CollectionGone(coll.name)
        self.metrics.collection_writes.labels("add", "ok").inc(len(ids))
        if refresh:
            await self._after_write(coll.name)

    async def remove(self, coll: Collection, ids: list[str]) -> int:
        """Delete items by id; returns how many existed."""
        meta_key, vec_key, md_key, log_key = self._keys(coll.name)
        result = await self._redis(f"write (delete items of {coll.name!r})", lambda: self._script(_REMOVE)(
            keys=[meta_key, vec_key, md_key, log_key], args=[coll.uid, self.log_length, json.dumps(ids), *ids]))
        if int(result[0]) < 0:
            self.cache.pop(coll.name, None)
            raise CollectionGone(coll.name)
        self.metrics.collection_writes.labels("remove", "ok").inc(int(result[2]))
        await self._after_write(coll.name)
        return int(result[2])

    async def _after_write(self, name: str) -> None:
        try:
            await self._refresh(name)
        except (RedisError, OSError) as err:  # written; the next read catches up
            self.stores._mark_down(err)

    # -- search ----------------------------------------------------------------------------------
    async def search(self, coll: Collection, view: _View, queries: list[Query]) -> list[list[Hit]]:
        """Top-k hits per query. Concurrent searches of a collection share one pass over its matrix."""
        future = asyncio.get_running_loop().create_future()
        coll.pending.append((view, queries, future))
        if not coll.searching:
            coll.searching = True
            asyncio.get_running_loop().create_task(self._drain(coll))
        return await future

    async def _drain(self, coll: Collection) -> None:
        try:
            while coll.pending:
                batch, coll.pending = coll.pending, []
                groups: dict[int, tuple[_View, list]] = {}
                for view, queries, future in batch:
                    groups.setdefault(id(view), (view, []))[1].append((queries, future))
                for view, items in groups.values():
                    flat = [q for queries, _ in items for q in queries]
                    started = time.perf_counter()
                    try:
                        hits = await asyncio.to_thread(coll.index.search, flat, view)
                    except Exception as err:  # noqa: BLE001 - handed to the waiting requests
                        for _, future in items:
                            if not future.done():
                                future.set_exception(err)
                        continue
                    self.metrics.collection_search.observe(time.perf_counter() - started)
                    self.metrics.collection_queries_per_pass.observe(len(flat))
                    offset = 0
                    for queries, future in items:
                        if not future.done():
                            future.set_result(hits[offset : offset + len(queries)])
                        offset += len(queries)
        finally:
            coll.searching = False
