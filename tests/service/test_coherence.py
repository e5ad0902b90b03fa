"""service.coherence against a real Redis: two caches of one namespace (two "processes") stay coherent."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from service.coherence import CoherentCache, NamespaceFull, RedisUnavailable

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
