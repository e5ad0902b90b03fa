"""One cross-process cache-invalidation mechanism: named values in Redis, cached in each process.

Every replica keeps an in-process LRU of values it read from Redis. They stay coherent through
three Redis keys per namespace, written only by the Lua scripts below (atomic, so a write and its
version bump can never be seen apart):

- `{ns}:generations`: hash name -> generation (the write clock's value when the name was last
  written); it is also the namespace's index (listing = its keys).
- `{ns}:clock`: counter, incremented by every write (put or delete) in the namespace.
- `{ns}:epoch`: a random id set by the first write after the namespace was empty, so a Redis that
  restarted empty (or was flushed) is told apart from one that merely has the same clock value.

A read first makes sure the process has checked `(epoch, clock)` within `sync_interval_s`; one
`MGET` does it. When they moved, one transaction reads the generations, and every cached entry
whose generation differs (or whose name is gone) is dropped, so the next read reloads it. A read
therefore never answers from a value that was replaced or deleted more than `sync_interval_s`
ago while Redis is reachable.

Redis unreachable: nothing can be written (writes go to Redis first and fail), so the only changes
a process can miss are those of the last `sync_interval_s` before the outage, or, when only this
process lost Redis (a network partition), those made meanwhile by the others. Cached values are
served for at most `max_stale_s` after the last successful check; after that reads raise
`RedisUnavailable` too. Entries are loaded on demand and evicted least-recently-used past
`max_entries`.

Values are Redis hashes (`key_of(name)` -> {field: bytes}); `decode` turns one into the cached
object. Writers call `put_hash` / `delete` here, never plain HSET/DEL, so the clock moves.

Large values that change in small steps (a collection of items) use the same keys plus a change log
per name, `{ns}:changes:{name}` (a stream: `gen`, `prev` = the name's generation before the write,
`changed` = JSON list of the members written). Such values are read by a `load` coroutine instead of
`decode`, written by `write` with a script made by `versioned_script` (the caller's Lua changes its
own keys; the wrapper bumps the generation and appends to the log in the same script), and a cached
value that fell behind is brought up to date by `catch_up(value, members)` with the members named
in the log since its generation. A gap in that chain (the log trimmed past it, the name deleted and
made again) reloads the value whole.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

T = TypeVar("T")

# KEYS: clock, epoch, generations, value key; ARGV: name, limit (0: none), new epoch, field, value, ...
# -> {the new generation, the epoch}, or {-1} when the name is new and the namespace holds `limit` names
_PUT_HASH = """
local is_new = redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0
local limit = tonumber(ARGV[2])
if is_new and limit > 0 and redis.call('HLEN', KEYS[3]) >= limit then return {-1} end
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[4], unpack(ARGV, 4))
local gen = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], ARGV[3], 'NX')
redis.call('HSET', KEYS[3], ARGV[1], gen)
return {gen, redis.call('GET', KEYS[2])}
"""

# KEYS: clock, epoch, generations, value keys...; ARGV: name, new epoch -> 1 if it existed
_DELETE = """
local listed = redis.call('HDEL', KEYS[3], ARGV[1])
local removed = redis.call('DEL', unpack(KEYS, 4))
redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'NX')
if listed + removed > 0 then return 1 end
return 0
"""

# KEYS: generations, legacy index set, clock, epoch; ARGV: value-key prefix, new epoch, value-key
# suffix. Names in the set whose value exists become generation 0 (values written before generations
# existed); the set is then removed, and the clock moves if anything was adopted.
_ADOPT_LEGACY_INDEX = """
local names = redis.call('SMEMBERS', KEYS[2])
local adopted = 0
for _, name in ipairs(names) do
  if redis.call('EXISTS', ARGV[1] .. name .. ARGV[3]) == 1 then
    adopted = adopted + redis.call('HSETNX', KEYS[1], name, 0)
  end
end
redis.call('DEL', KEYS[2])
if adopted > 0 then
  redis.call('INCR', KEYS[3])
  redis.call('SET', KEYS[4], ARGV[2], 'NX')
end
return adopted
"""

# The wrapper of `versioned_script`. KEYS: clock, epoch, generations, change log, then the caller's
# keys (K); ARGV: name, new epoch, log length, then the caller's arguments (A). The body returns
# (result, changed): changed is a JSON list of the members it wrote, or false when it changed nothing.
# -> {new generation (0: nothing changed), epoch, result, the generation before ('' if none), the log entry's id}
_VERSIONED_WRITE = """
local K, A = {}, {}
for i = 5, #KEYS do K[#K + 1] = KEYS[i] end
for i = 4, #ARGV do A[#A + 1] = ARGV[i] end
local function body(K, A)
%s
end
local result, changed = body(K, A)
if not changed then return {0, false, result, '', ''} end
local prev = redis.call('HGET', KEYS[3], ARGV[1]) or ''
local gen = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'NX')
redis.call('HSET', KEYS[3], ARGV[1], gen)
local log_id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'gen', gen, 'prev', prev, 'changed', changed)
return {gen, redis.call('GET', KEYS[2]), result, prev, log_id}
"""

REDIS_ERRORS = (RedisError, OSError)


def versioned_script(body: str) -> str:
    """A write script for `CoherentCache.write`: `body` (Lua, sees the caller's keys as `K` and
    arguments as `A`, returns `result, changed`) runs with the version bump and log entry, atomically."""
    return _VERSIONED_WRITE % body


class RedisUnavailable(RuntimeError):
    """Redis could not be reached, and the cache may not answer for it (`max_stale_s` passed, or a miss)."""


def _unavailable(err: Exception) -> RedisUnavailable:
    return err if isinstance(err, RedisUnavailable) else RedisUnavailable(f"{type(err).__name__}: {err}")


class NamespaceFull(RuntimeError):
    """A new name was refused: the namespace already holds `limit` names."""

    def __init__(self, limit: int):
        super().__init__(f"the namespace already holds {limit} names")
        self.limit = limit


@dataclass
class _Entry(Generic[T]):
    version: tuple  # (epoch, generation) of the Redis state the value was read or caught up at
    value: T
    log_id: str = "0-0"  # the last change-log entry the value includes (values with a change log)


@dataclass
class Written:
    """What `CoherentCache.write` did: the script's own result, the new generation (0: no change),
    and whether the cached value was brought to it in process (`apply`)."""

    result: Any
    generation: int
    applied: bool = False


class CoherentCache(Generic[T]):
    """Named values (Redis hashes) with an in-process LRU that every process keeps coherent."""

    def __init__(
        self,
        namespace: str,
        key_of: Callable[[str], str],
        decode: Callable[[dict[bytes, bytes]], T] | None = None,
        max_entries: int = 256,
        sync_interval_s: float = 0.25,
        max_stale_s: float = 300.0,
        load: Callable[[str], Awaitable[T | None]] | None = None,
        catch_up: Callable[[T, list[str]], Awaitable[None]] | None = None,
    ):
        """`decode` turns a value's hash into the cached object; or `load(name)` reads a value made of
        several keys (None: gone), and `catch_up(value, members)` re-reads the named members of a
        cached value in place (values written with `write`)."""
        if (decode is None) == (load is None):
            raise ValueError("give either decode or load")
        self.namespace = namespace
        self.key_of = key_of
        self.decode = decode
        self.load = load
        self.catch_up = catch_up
        self.max_entries = int(max_entries)
        self.sync_interval_s = float(sync_interval_s)
        self.max_stale_s = float(max_stale_s)
        self.clock_key = f"{namespace}:clock"
        self.epoch_key = f"{namespace}:epoch"
        self.generations_key = f"{namespace}:generations"
        self.client: aioredis.Redis | None = None
        self._entries: collections.OrderedDict[str, _Entry[T]] = collections.OrderedDict()
        self._generations: dict[str, int] = {}  # the namespace's names as of the last sync
        # (epoch, clock) of a Redis state every cached entry was checked against; None after this
        # process wrote or loaded at another state, so the next check reads all generations
        self._seen: tuple | None = None
        self._epoch: bytes | None = None  # the epoch of the last sync
        self._synced_at: float | None = None  # time.monotonic() of the last successful check
        self._sync_started_at: float | None = None  # ... and when that check began
        self._lock = asyncio.Lock()
        self._name_locks: dict[str, asyncio.Lock] = {}  # loads and catch-ups of values with a change log
        self._scripts: dict[str, Any] = {}

    def changes_key(self, name: str) -> str:
        return f"{self.namespace}:changes:{name}"

    # -- state ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def cached(self, name: str) -> T | None:
        entry = self._entries.get(name)
        return None if entry is None else entry.value

    def cached_values(self) -> list[T]:
        return [entry.value for entry in self._entries.values()]

    def stale_for(self) -> float | None:
        """Seconds since the last successful check of Redis (None: never checked)."""
        return None if self._synced_at is None else time.monotonic() - self._synced_at

    def may_serve_cached(self) -> bool:
        """True while the last successful check is at most `max_stale_s` old."""
        age = self.stale_for()
        return age is not None and age <= self.max_stale_s

    def _remember(self, name: str, version: tuple, value: T, log_id: str = "0-0") -> None:
        self._entries[name] = _Entry(version, value, log_id)
        self._entries.move_to_end(name)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    # -- reads ------------------------------------------------------------------------------------
    async def sync(self, force: bool = False) -> None:
        """Check `(epoch, clock)` (unless checked within `sync_interval_s`); drop entries that changed.

        With `sync_interval_s` 0 every read checks; concurrent readers share a check that began
        after they asked. Values with a change log that fell behind are kept (`get` catches them
        up); other changed values are dropped. Raises RedisError/OSError when Redis cannot be reached.
        """
        asked_at = time.monotonic()
        async with self._lock:  # concurrent readers share one check
            age = self.stale_for()
            if not force and age is not None and (age < self.sync_interval_s or self._sync_started_at >= asked_at):
                return
            started = time.monotonic()
            seen = tuple(await self.client.mget(self.epoch_key, self.clock_key))
            if seen != self._seen:
                async with self.client.pipeline(transaction=True) as pipe:
                    epoch, clock, raw = await pipe.get(self.epoch_key).get(self.clock_key).hgetall(self.generations_key).execute()
                generations = {k.decode(): int(v) for k, v in raw.items()}
                for name, entry in list(self._entries.items()):
                    generation = generations.get(name)
                    # the epoch too: after Redis restarted empty, generations count from 1 again
                    if entry.version == (epoch, generation):
                        continue
                    if self.catch_up is not None and entry.version[0] == epoch and generation is not None and entry.version[1] < generation:
                        continue  # behind: caught up from the change log on its next read
                    del self._entries[name]
                self._generations = generations
                self._epoch = epoch
                self._seen = (epoch, clock)
            self._synced_at, self._sync_started_at = time.monotonic(), started

    async def get(self, name: str, offline: bool = False) -> tuple[T | None, str]:
        """(value or None if there is none, source: "cache" | "redis" | "stale_cache").

        `offline`: Redis is known to be down; answer from the cache without trying it. Raises
        RedisUnavailable when Redis cannot be reached and the cache may not answer.
        """
        try:
            if offline:
                raise RedisUnavailable("Redis is down")
            await self.sync()
        except (RedisUnavailable, *REDIS_ERRORS) as err:
            return self._stale(name, err)
        entry = self._entries.get(name)
        if entry is not None and not self._behind(name, entry):
            self._entries.move_to_end(name)
            return entry.value, "cache"
        if self.load is not None:
            return await self._get_logged(name)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                data, generation, epoch, clock = await (
                    pipe.hgetall(self.key_of(name)).hget(self.generations_key, name).get(self.epoch_key).get(self.clock_key).execute()
                )
        except REDIS_ERRORS as err:
            raise _unavailable(err) from err
        if not data or generation is None:
            return None, "redis"
        value = self.decode(data)
        if (epoch, clock) != self._seen:
            self._seen = None  # cached at a later state than the last check saw: the next check reads all
        self._remember(name, (epoch, int(generation)), value)
        return value, "redis"

    def _stale(self, name: str, err: Exception) -> tuple[T, str]:
        """The cached value while it may be served without Redis; else raise RedisUnavailable."""
        entry = self._entries.get(name)
        if entry is not None and self.may_serve_cached():
            return entry.value, "stale_cache"
        raise _unavailable(err) from err

    def _behind(self, name: str, entry: _Entry) -> bool:
        generation = self._generations.get(name)
        return self.catch_up is not None and generation is not None and entry.version[1] < generation

    async def _get_logged(self, name: str) -> tuple[T | None, str]:
        """A value with a change log: loaded whole, or caught up from the log (one load at a time)."""
        async with self._name_locks.setdefault(name, asyncio.Lock()):
            try:
                entry = self._entries.get(name)
                if entry is not None:
                    if not self._behind(name, entry):  # caught up meanwhile
                        return entry.value, "cache"
                    if await self._catch_up(name, entry, until=self._generations.get(name)):
                        return entry.value, "caught_up"
                value = await self._load_whole(name)
            except (RedisUnavailable, *REDIS_ERRORS) as err:
                return self._stale(name, err)
            return value, "redis"

    async def _load_whole(self, name: str) -> T | None:
        """`load` the value, at a version read before it (writes during the load come from the log)."""
        async with self.client.pipeline(transaction=True) as pipe:
            generation, epoch, clock, last = await (
                pipe.hget(self.generations_key, name).get(self.epoch_key).get(self.clock_key)
                .xrevrange(self.changes_key(name), count=1).execute()
            )
        value = None if generation is None else await self.load(name)
        if value is None:
            self._entries.pop(name, None)
            return None
        if (epoch, clock) != self._seen:
            self._seen = None
        self._remember(name, (epoch, int(generation)), value, last[0][0].decode() if last else "0-0")
        if self.catch_up is not None:
            await self._catch_up(name, self._entries[name])  # what was written during the load
        return value

    async def _catch_up(self, name: str, entry: _Entry, until: int | None = None) -> bool:
        """Apply the change log past `entry` to its value in place; False when the chain has a gap
        (trimmed, or the name deleted and made again) or does not reach generation `until`."""
        epoch, generation = entry.version
        log_id, members = entry.log_id, set()
        while True:
            raw = await self.client.xrange(self.changes_key(name), min="(" + log_id, max="+", count=1000)
            if not raw:
                break
            for entry_id, fields in raw:
                gen = int(fields[b"gen"])
                if gen > generation:
                    if fields[b"prev"].decode() != str(generation):
                        return False
                    members.update(json.loads(fields[b"changed"]))
                    generation = gen
                log_id = entry_id.decode()
        if until is not None and generation < until:
            return False
        if members:
            await self.catch_up(entry.value, sorted(members))
        entry.version, entry.log_id = (epoch, generation), log_id
        if generation > self._generations.get(name, 0):
            self._generations[name] = generation  # seen in the log before the next check
        return True

    async def names(self, offline: bool = False) -> tuple[list[str], str]:
        """(the namespace's names, source "redis" | "stale_cache") as of a check at most
        `sync_interval_s` old, or `max_stale_s` while Redis is down (`offline`: known to be)."""
        try:
            if offline:
                raise RedisUnavailable("Redis is down")
            await self.sync()
            source = "redis"
        except (RedisUnavailable, *REDIS_ERRORS) as err:
            if not self.may_serve_cached():
                raise _unavailable(err) from err
            source = "stale_cache"
        return sorted(self._generations), source

    async def warm(self, limit: int | None = None) -> int:
        """Load up to `limit` (default `max_entries`) values into the cache; returns how many."""
        await self.sync(force=True)
        loaded = 0
        for name in sorted(self._generations)[: self.max_entries if limit is None else limit]:
            if name not in self._entries:
                value, _ = await self.get(name)
                loaded += value is not None
        return loaded

    # -- writes -----------------------------------------------------------------------------------
    async def put_hash(self, name: str, fields: dict[str, bytes], value: T, limit: int = 0) -> int:
        """Write `fields` as the hash of `name`, bump the clock, cache `value`; returns the generation.

        Raises NamespaceFull when `name` is new and `limit` names exist, RedisError/OSError when
        Redis cannot be reached.
        """
        args = [name, int(limit), uuid.uuid4().hex]
        for key, data in fields.items():
            args += [key, data]
        keys = [self.clock_key, self.epoch_key, self.generations_key, self.key_of(name)]
        result = await self.client.eval(_PUT_HASH, len(keys), *keys, *args)
        generation = int(result[0])
        if generation < 0:
            raise NamespaceFull(limit)
        self._generations[name] = generation
        self._seen = None  # the next check reads the generations again (the clock moved here)
        self._remember(name, (result[1], generation), value)
        return generation

    async def write(self, script: str, name: str, keys: list[str], args: list, log_length: int = 10_000,
                    apply: Callable[[T], None] | None = None) -> Written:
        """Run a `versioned_script` on `name`'s `keys` with `args`; returns its result and the new
        generation (0 when it changed nothing). The cached value is caught up on its next read, or
        now by `apply(value)` (the same change, made in process) when it was exactly at the
        generation before this write: then nothing needs to be read back from Redis."""
        if script not in self._scripts:
            self._scripts[script] = self.client.register_script(script)
        all_keys = [self.clock_key, self.epoch_key, self.generations_key, self.changes_key(name), *keys]
        generation, epoch, result, prev, log_id = await self._scripts[script](keys=all_keys, args=[name, uuid.uuid4().hex, int(log_length), *args])
        generation = int(generation)
        applied = False
        if generation:
            self._generations[name] = generation
            self._advance_seen(epoch, generation)
            entry, lock = self._entries.get(name), self._name_locks.get(name)
            if apply is not None and entry is not None and prev and entry.version == (epoch, int(prev)) and not (lock and lock.locked()):
                apply(entry.value)
                entry.version, entry.log_id = (epoch, generation), log_id.decode() if isinstance(log_id, bytes) else str(log_id)
                applied = True
        return Written(result, generation, applied)

    def _advance_seen(self, epoch: bytes, clock: int) -> None:
        """This process moved the clock to `clock`: if it was one step behind, nothing else changed."""
        if self._seen is not None and self._seen == (epoch, str(clock - 1).encode()):
            self._seen = (epoch, str(clock).encode())
        else:
            self._seen = None  # the next check reads the generations again

    async def delete(self, name: str, extra_keys: tuple[str, ...] = ()) -> bool:
        """Delete `name` (its change log and `extra_keys` too), bump the clock, drop it here; True if it existed."""
        keys = [self.clock_key, self.epoch_key, self.generations_key, self.key_of(name), self.changes_key(name), *extra_keys]
        existed = bool(await self.client.eval(_DELETE, len(keys), *keys, name, uuid.uuid4().hex))
        self._entries.pop(name, None)
        self._generations.pop(name, None)
        self._seen = None
        return existed

    async def adopt_legacy_index(self, legacy_set_key: str, value_prefix: str, value_suffix: str = "") -> int:
        """Give names of an older plain index set (values written before generations) generation 0;
        a name is adopted when `value_prefix + name + value_suffix` exists."""
        keys = [self.generations_key, legacy_set_key, self.clock_key, self.epoch_key]
        adopted = int(await self.client.eval(_ADOPT_LEGACY_INDEX, len(keys), *keys, value_prefix, uuid.uuid4().hex, value_suffix))
        if adopted:
            self._seen = None
        return adopted
