"""Class stores in a real Redis: persistence across app restarts, model scoping, and Redis going away."""

from __future__ import annotations

import copy
import time

import pytest

from tests.service.conftest import RedisServer, service_client, wait_for

STORE = {"classes": ["crow", "raven", "jay"], "templates": ["a photo of a {}."],
         "hints": [{"a": "crow", "b": "raven", "text": "The first bird is smaller than the second."}]}


def test_store_survives_app_restart_and_is_not_reencoded(encoder, redis_url, photo_b64):
    with service_client(encoder, redis_url) as client:
        assert client.put("/v1/stores/birds", json=STORE).status_code == 200
        first = client.post("/v1/classify", json={"images": photo_b64[:2], "store": "birds"}).json()
    # a fresh app (empty in-process cache) finds the store in Redis
    with service_client(encoder, redis_url) as client:
        text_calls = encoder.calls["text"]
        assert client.get("/v1/stores").json()["stores"] == ["birds"]
        again = client.post("/v1/classify", json={"images": photo_b64[:2], "store": "birds"})
        assert again.status_code == 200, again.text
        assert again.json()["results"] == first["results"]
        assert encoder.calls["text"] == text_calls


def test_stores_are_scoped_by_model_fingerprint(encoder, redis_url, photo_b64):
    with service_client(encoder, redis_url) as client:
        assert client.put("/v1/stores/scoped", json=STORE).status_code == 200
    other = copy.copy(encoder)  # same network, different identity: what a retrained model looks like
    other.fingerprint = "0" * 16
    with service_client(other, redis_url) as client:
        assert client.get("/v1/stores").json()["stores"] == []
        r = client.post("/v1/classify", json={"images": photo_b64[:1], "store": "scoped"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "store_not_found"


def test_redis_down_serves_from_cache_and_recovers(encoder, tmp_path, photo_b64):
    server = RedisServer(tmp_path).start()
    try:
        with service_client(encoder, server.url) as client:
            assert client.put("/v1/stores/kept", json=STORE).status_code == 200
            server.stop()  # Redis goes away mid-test
            assert wait_for(lambda: client.get("/readyz").json()["redis"]["up"] is False)
            metrics = client.get("/metrics").text
            assert "pcclip_redis_up 0.0" in metrics
            # serving goes on from the in-process cache, without re-encoding the classes
            text_calls = encoder.calls["text"]
            r = client.post("/v1/classify", json={"images": photo_b64[:2], "store": "kept"})
            assert r.status_code == 200, r.text
            assert encoder.calls["text"] == text_calls
            assert client.get("/v1/stores").json()["stores"] == ["kept"]
            # writes are refused clearly and quickly
            started = time.monotonic()
            put = client.put("/v1/stores/new", json=STORE)
            assert put.status_code == 503 and put.json()["error"]["code"] == "store_unavailable"
            assert "Redis" in put.json()["error"]["message"] and time.monotonic() - started < 5
            assert client.delete("/v1/stores/kept").status_code == 503
            unknown = client.post("/v1/classify", json={"images": photo_b64[:1], "store": "never-cached"})
            assert unknown.status_code == 503
            # other routes are untouched
            assert client.post("/v1/embeddings", json={"input": "still serving"}).status_code == 200
            # Redis comes back on the same port with its AOF: the app reconnects by itself
            server.start()
            assert wait_for(lambda: client.get("/readyz").json()["redis"]["up"] is True)
            assert "pcclip_redis_up 1.0" in client.get("/metrics").text
            assert client.put("/v1/stores/new", json=STORE).status_code == 200
            assert client.get("/v1/stores").json()["stores"] == ["kept", "new"]
        # nothing stored was lost: a fresh app reads both stores from the restarted Redis
        with service_client(encoder, server.url) as client:
            assert client.get("/v1/stores/kept").status_code == 200
            assert client.get("/v1/stores/new").json()["classes"] == STORE["classes"]
    finally:
        server.stop()


def test_service_starts_with_redis_down(encoder, tmp_path, photo_b64):
    server = RedisServer(tmp_path)  # not started yet
    with service_client(encoder, server.url) as client:
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["redis"]["up"] is False
        assert client.post("/v1/classify", json={"images": photo_b64[:1], "classes": ["a", "b"]}).status_code == 200
        assert client.put("/v1/stores/x", json=STORE).status_code == 503
        server.start()
        try:
            assert wait_for(lambda: client.get("/readyz").json()["redis"]["up"] is True)
            assert client.put("/v1/stores/x", json=STORE).status_code == 200
        finally:
            server.stop()


@pytest.mark.parametrize("name", ["a%0A", "a" * 128 + "%0A", "a%20b", "a" * 129])
def test_store_names_are_matched_in_full(client, name):
    r = client.put(f"/v1/stores/{name}", json=STORE)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_store_name"
    assert client.get("/v1/stores").json()["stores"] == []


def test_number_of_stores_is_capped_and_the_cache_evicts(encoder, redis_url, photo_b64):
    small = {"classes": ["crow", "raven"], "templates": ["a photo of a {}."]}
    with service_client(encoder, redis_url, max_stores=2, store_cache_size=1) as client:
        assert client.put("/v1/stores/one", json=small).status_code == 200
        assert client.put("/v1/stores/two", json=small).status_code == 200
        third = client.put("/v1/stores/three", json=small)
        assert third.status_code == 409 and third.json()["error"]["code"] == "too_many_stores"
        assert "2" in third.json()["error"]["message"]
        assert client.put("/v1/stores/one", json=STORE).status_code == 200  # replacing is not a new store
        assert client.get("/v1/stores").json()["stores"] == ["one", "two"]
        assert client.get("/readyz").json()["redis"]["cached_stores"] == 1
        for name in ("one", "two", "one"):  # evicted stores are read back from Redis
            assert client.post("/v1/classify", json={"images": photo_b64[:1], "store": name}).status_code == 200
        assert client.delete("/v1/stores/two").status_code == 200
        assert client.put("/v1/stores/three", json=small).status_code == 200


def test_listing_and_lookup_agree_after_redis_comes_back_empty(encoder, tmp_path, photo_b64):
    """Issue 15 item 11: the in-process cache must not keep answering for a store Redis lost."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    server = RedisServer(tmp_path / "a").start()
    try:
        with service_client(encoder, server.url) as client:
            assert client.put("/v1/stores/birds", json=STORE).status_code == 200
            server.stop()
            assert wait_for(lambda: client.get("/readyz").json()["redis"]["up"] is False)
            fresh = RedisServer(tmp_path / "b", port=server.port).start()  # same address, no data
            try:
                assert wait_for(lambda: client.get("/readyz").json()["redis"]["up"] is True)
                assert client.get("/v1/stores").json()["stores"] == []
                assert client.get("/v1/stores/birds").status_code == 404
                r = client.post("/v1/classify", json={"images": photo_b64[:1], "store": "birds"})
                assert r.status_code == 404 and r.json()["error"]["code"] == "store_not_found"
            finally:
                fresh.stop()
    finally:
        server.stop()


def test_a_redis_restart_does_not_fail_a_command_on_each_dead_pooled_connection(tmp_path):
    """After a restart every pooled connection is dead; each used to fail one command and mark Redis
    down (a 503 for that request). Now a connection error is retried once on a new connection."""
    import asyncio

    from service.metrics import ServiceMetrics
    from service.stores import StoreRegistry

    server = RedisServer(tmp_path).start()

    async def main():
        registry = StoreRegistry(server.url, "m", "f", ServiceMetrics(), check_interval_s=3600)
        await registry.start()
        client = registry._client
        await asyncio.gather(*(client.blpop(["nothing"], timeout=0.1) for _ in range(3)))  # 3 pooled connections
        assert len(client.connection_pool._available_connections) == 3
        server.stop()
        server.start()
        try:  # each of the dead connections is used once (at the same time, so none is reused)
            await asyncio.gather(*(client.blpop(["nothing"], timeout=0.1) for _ in range(3)))
            assert await registry.check() and await registry.names() == ([], "redis")
        finally:
            await registry.stop()

    try:
        asyncio.run(main())
    finally:
        server.stop()
