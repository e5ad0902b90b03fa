"""service.coherence against a real Redis: two caches of one namespace (two "processes") stay coherent."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis.asyncio as aioredis

from service.coherence import CoherentCache, NamespaceFull, RedisUnavailable, versioned_script

NS = "test:ns"


def _cache(url: str, **kw) -> CoherentCache[str]:
    cache = CoherentCache(NS, key_of=lambda n: f"test:value:{n}", decode=lambda d: d[b"v"].decode(), **kw)
    cache.client = aioredis.from_url(url, socket_timeout=0.3, socket_connect_timeout=0.3)
    return cache


async def _put(cache, name, value, limit=0):
    return await cache.put_hash(name, {"v": value.encode()}, value, limit=limit)


def test_writes_in_one_cache_reach_the_other_after_the_interval(redis_url):
    async def main():
        a, b = _cache(redis_url, sync_interval_s=0.05), _cache(redis_url, sync_interval_s=0.05)
        await _put(a, "x", "one")
        assert await b.get("x") == ("one", "redis")
        assert await b.get("x") == ("one", "cache")
        await _put(a, "x", "two")
        await asyncio.sleep(0.06)
        assert await b.get("x") == ("two", "redis")
        assert await a.delete("x") is True
        await asyncio.sleep(0.06)
        assert await b.get("x") == (None, "redis")
        assert await b.names() == ([], "redis")
        assert await a.delete("x") is False

    asyncio.run(main())


def test_a_redis_emptied_and_rewritten_to_the_same_clock_is_noticed(redis_url, redis_server):
    async def main():
        a, b = _cache(redis_url, sync_interval_s=0.05), _cache(redis_url, sync_interval_s=0.05)
        await _put(a, "x", "old")
        assert (await b.get("x"))[0] == "old"
        redis_server.command("FLUSHALL")
        await _put(a, "x", "new")  # clock is 1 again, as before the flush: only the epoch tells
        await asyncio.sleep(0.06)
        assert (await b.get("x"))[0] == "new"

    asyncio.run(main())


def test_cached_reads_during_an_outage_last_max_stale_s(redis_url, redis_server):
    async def main():
        cache = _cache(redis_url, sync_interval_s=0.01, max_stale_s=0.5)
        await _put(cache, "x", "kept")
        await cache.sync(force=True)
        redis_server.stop()
        try:
            await asyncio.sleep(0.02)
            assert await cache.get("x") == ("kept", "stale_cache")
            assert await cache.names() == (["x"], "stale_cache")
            with pytest.raises(RedisUnavailable):
                await cache.get("not-cached")
            time.sleep(0.5)
            with pytest.raises(RedisUnavailable):
                await cache.get("x")
            with pytest.raises(RedisUnavailable):
                await cache.names()
        finally:
            redis_server.start()

    asyncio.run(main())


def test_lru_eviction_and_the_name_limit(redis_url):
    async def main():
        cache = _cache(redis_url, max_entries=2)
        for name in ("a", "b", "c"):
            await _put(cache, name, name, limit=3)
        assert len(cache) == 2 and cache.cached("a") is None
        assert await cache.get("a") == ("a", "redis")  # evicted, not lost
        with pytest.raises(NamespaceFull):
            await _put(cache, "d", "d", limit=3)
        await _put(cache, "a", "again", limit=3)  # replacing an existing name is not a new one
        assert (await cache.names())[0] == ["a", "b", "c"]

    asyncio.run(main())


def test_names_of_a_legacy_index_set_are_adopted(redis_url, redis_server):
    async def main():
        cache = _cache(redis_url, sync_interval_s=0.01)
        client = cache.client
        await client.hset("test:value:old", mapping={"v": b"old"})
        await client.sadd("legacy:index", "old", "gone")  # "gone" has no value: not adopted
        assert await cache.adopt_legacy_index("legacy:index", "test:value:") == 1
        assert await cache.names() == (["old"], "redis")
        assert await cache.get("old") == ("old", "redis")
        assert not await client.exists("legacy:index")

    asyncio.run(main())


def test_a_flush_between_two_checks_of_an_empty_namespace_is_noticed(redis_url, redis_server):
    async def main():
        a, b = _cache(redis_url, sync_interval_s=0.05), _cache(redis_url, sync_interval_s=0.05)
        await b.sync(force=True)  # b saw the namespace empty
        await _put(a, "x", "old")
        assert (await b.get("x"))[0] == "old"
        redis_server.command("FLUSHALL")
        await _put(a, "x", "new")  # same generation as "old", another epoch
        await asyncio.sleep(0.06)
        assert (await b.get("x"))[0] == "new"

    asyncio.run(main())


def test_an_entry_loaded_after_a_check_is_dropped_when_redis_is_flushed(redis_url, redis_server):
    async def main():
        a, b = _cache(redis_url, sync_interval_s=0.05), _cache(redis_url, sync_interval_s=0.05)
        await b.sync(force=True)  # b saw the namespace empty: (no epoch, no clock)
        await _put(a, "x", "gone soon")
        assert (await b.get("x"))[0] == "gone soon"  # loaded within the interval
        redis_server.command("FLUSHALL")  # back to (no epoch, no clock), as b last saw it
        await asyncio.sleep(0.06)
        assert await b.get("x") == (None, "redis")

    asyncio.run(main())


# -- values with a change log (collections) -------------------------------------------------------
_SET_MEMBER = versioned_script("redis.call('HSET', K[1], A[1], A[2]) return 1, A[3]")


def _logged(url: str, loads: list) -> CoherentCache[dict]:
    """A cache of hashes `test:items:{name}` read whole by `load` (counted) and caught up member by member."""
    async def load(name):
        loads.append(name)
        data = await cache.client.hgetall(f"test:items:{name}")
        return {k.decode(): v.decode() for k, v in data.items()} or None

    async def catch_up(value, members):
        for member, got in zip(members, await cache.client.hmget(f"test:items:{members[0].split('/')[0]}", members)):
            value[member] = got.decode()

    cache = CoherentCache(NS, key_of=lambda n: f"test:items:{n}", load=load, catch_up=catch_up, sync_interval_s=0.0)
    cache.client = aioredis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    return cache


async def _set(cache, name, member, value):
    return await cache.write(_SET_MEMBER, name, [f"test:items:{name}"], [f"{name}/{member}", value, json.dumps([f"{name}/{member}"])])


def test_a_value_with_a_change_log_is_caught_up_not_reloaded(redis_url):
    async def main():
        loads_a, loads_b = [], []
        a, b = _logged(redis_url, loads_a), _logged(redis_url, loads_b)
        assert (await _set(a, "c", "x", "1")).generation > 0
        assert await b.get("c") == ({"c/x": "1"}, "redis")
        await _set(a, "c", "y", "2")
        await _set(a, "c", "x", "3")
        assert await b.get("c") == ({"c/x": "3", "c/y": "2"}, "caught_up")  # seen on the next read, no wait
        assert await b.get("c") == ({"c/x": "3", "c/y": "2"}, "cache")
        assert loads_b == ["c"]
        assert (await b.names())[0] == ["c"]

    asyncio.run(main())


def test_a_gap_in_the_change_log_or_a_name_made_again_reloads_the_value(redis_url):
    async def main():
        loads = []
        a, b = _logged(redis_url, []), _logged(redis_url, loads)
        await _set(a, "c", "x", "1")
        assert (await b.get("c"))[0] == {"c/x": "1"}
        await _set(a, "c", "y", "2")
        await a.client.delete(a.changes_key("c"))  # the log trimmed past what b has applied
        await _set(a, "c", "z", "3")
        assert await b.get("c") == ({"c/x": "1", "c/y": "2", "c/z": "3"}, "redis")
        assert loads == ["c", "c"]
        # deleted and made again: b does not keep members of the old value
        assert await a.delete("c", extra_keys=("test:items:c",)) is True
        await _set(a, "c", "w", "4")
        assert await b.get("c") == ({"c/w": "4"}, "redis")

    asyncio.run(main())
