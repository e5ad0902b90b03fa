"""API keys: 401 without a key, 403 with a wrong one; health and metrics stay open."""

from __future__ import annotations

import pytest

from tests.service.conftest import service_client

STORE = {"classes": ["crow", "raven"]}


@pytest.fixture
def keyed(encoder, redis_url):
    with service_client(encoder, redis_url, api_keys=["k1", "k2"]) as client:
        yield client


def test_keys_required_everywhere_but_health(keyed, photo_b64):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert keyed.get(path).status_code == 200
    r = keyed.post("/v1/embeddings", json={"input": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    r = keyed.post("/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_api_key"
    assert keyed.get("/v1/stores").status_code == 401
    assert keyed.put("/v1/stores/s", json=STORE).status_code == 401
    # unauthenticated bad input gets 401, not a validation error
    assert keyed.post("/v1/rank", content=b"{broken").status_code == 401
    ok = {"Authorization": "Bearer k1"}
    assert keyed.post("/v1/embeddings", json={"input": "x"}, headers=ok).status_code == 200
    assert keyed.put("/v1/stores/s", json=STORE, headers={"X-API-Key": "k2"}).status_code == 200
    assert keyed.post("/v1/classify", json={"images": photo_b64[:1], "store": "s"}, headers=ok).status_code == 200


def test_public_reads_still_protect_store_writes(encoder, redis_url):
    with service_client(encoder, redis_url, api_keys=["k1"], public_reads=True) as client:
        assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 200
        assert client.put("/v1/stores/s", json=STORE).status_code == 401
        assert client.put("/v1/stores/s", json=STORE, headers={"X-API-Key": "bad"}).status_code == 403
        assert client.put("/v1/stores/s", json=STORE, headers={"X-API-Key": "k1"}).status_code == 200
        assert client.get("/v1/stores/s").status_code == 200
        assert client.delete("/v1/stores/s").status_code == 401


def test_keys_from_environment(monkeypatch):
    from service.settings import Settings

    monkeypatch.setenv("PCCLIP_API_KEYS", "a, b,,c")
    monkeypatch.setenv("PCCLIP_MAX_ITEMS", "7")
    s = Settings()
    assert s.api_keys == ["a", "b", "c"] and s.max_items == 7
    monkeypatch.delenv("PCCLIP_API_KEYS")
    assert Settings().api_keys == [] and Settings().redis_url == "redis://localhost:6379/0"


@pytest.mark.parametrize("value", ["k1 ", " k1", "k1\t"])
def test_whitespace_around_a_key_is_treated_alike_in_both_headers(keyed, value):
    by_api_key = keyed.post("/v1/embeddings", json={"input": "x"}, headers={"X-API-Key": value})
    by_bearer = keyed.post("/v1/embeddings", json={"input": "x"}, headers={"Authorization": f"Bearer {value}"})
    assert by_api_key.status_code == by_bearer.status_code == 200
    inner = keyed.post("/v1/embeddings", json={"input": "x"}, headers={"X-API-Key": "k 1"})
    assert inner.status_code == 403
