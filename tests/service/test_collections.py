"""Collections over real Redis: CRUD, rank = /v1/rank, composed search, replicas, restarts, outages, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.difference import composed_query
from tests.service.conftest import RedisServer, service_client, wait_for


def _items(photo_b64, cub_photos):
    return [{"id": f"{p.parent.name}/{p.name}", "image": b, "metadata": {"class": p.parent.name, "n": i}}
            for i, (p, b) in enumerate(zip(cub_photos, photo_b64))]


@pytest.fixture
def filled(client, photo_b64, cub_photos):
    assert client.put("/v1/collections/birds", json={"description": "six CUB photos"}).status_code == 201
    r = client.post("/v1/collections/birds/items", json={"items": _items(photo_b64, cub_photos)})
    assert r.status_code == 200, r.text
    return client


def test_collection_lifecycle(filled, cub_photos):
    client = filled
    again = client.put("/v1/collections/birds")
    assert again.status_code == 200 and again.json()["count"] == 6  # exists: left as it is
    info = client.get("/v1/collections/birds").json()
    assert info["count"] == 6 and info["dim"] > 0 and info["description"] == "six CUB photos" and info["dtype"] == "float32"
    assert client.get("/v1/collections").json()["collections"] == ["birds"]
    assert client.get("/v1/collections/birds/count").json()["count"] == 6
    first = f"{cub_photos[0].parent.name}/{cub_photos[0].name}"
    item = client.get(f"/v1/collections/birds/items/{first}", params={"embedding": "true"}).json()
    assert item["metadata"] == {"class": cub_photos[0].parent.name, "n": 0}
    assert abs(np.linalg.norm(item["embedding"]) - 1) < 1e-4
    assert client.get("/v1/collections/birds/items", params={"limit": 2}).json()["ids"] == [
        f"{p.parent.name}/{p.name}" for p in cub_photos[:2]]
    assert client.delete(f"/v1/collections/birds/items/{first}").json() == {"collection": "birds", "deleted": 1, "count": 5}
    assert client.delete(f"/v1/collections/birds/items/{first}").status_code == 404
    r = client.post("/v1/collections/birds/items/delete", json={"ids": [f"{cub_photos[1].parent.name}/{cub_photos[1].name}", "nope"]})
    assert r.json()["deleted"] == 1 and r.json()["count"] == 4
    assert client.delete("/v1/collections/birds").json() == {"deleted": "birds"}
    assert client.get("/v1/collections/birds").status_code == 404
    assert client.delete("/v1/collections/birds").status_code == 404
    assert client.get("/v1/collections").json()["collections"] == []


def test_rank_orders_like_v1_rank_on_the_same_photos(filled, photo_b64, cub_photos):
    client = filled
    for attribute in ("a larger bird", "a bird with a redder crown"):
        direct = client.post("/v1/rank", json={"attribute": attribute, "images": photo_b64}).json()["ranking"]
        stored = client.post("/v1/collections/birds/rank", json={"attribute": attribute, "top_k": 6}).json()["results"]
        assert [h["id"] for h in stored] == [f"{cub_photos[d['index']].parent.name}/{cub_photos[d['index']].name}" for d in direct]
        np.testing.assert_allclose([h["score"] for h in stored], [d["score"] for d in direct], atol=1e-4)
        low = client.post("/v1/collections/birds/rank", json={"attribute": attribute, "top_k": 2, "ascending": True}).json()["results"]
        assert [h["id"] for h in low] == [h["id"] for h in stored[::-1][:2]]
        assert low[0]["score"] <= low[1]["score"]
    only = client.post("/v1/collections/birds/rank", json={"attribute": "a larger bird", "filter": {"n": [0, 3]}}).json()["results"]
    assert sorted(h["metadata"]["n"] for h in only) == [0, 3]


def test_search_is_the_composed_query_and_leaves_out_the_reference(filled, photo_b64, cub_photos):
    client = filled
    ids = [f"{p.parent.name}/{p.name}" for p in cub_photos]
    images = np.array(client.post("/v1/embed", json={"images": photo_b64}).json()["image_embeddings"])
    mods = ["a larger bird", "a bird with a redder crown"]
    texts = np.array(client.post("/v1/embed", json={"texts": mods}).json()["text_embeddings"])
    for weights in ([1.0, 0.0], [-1.5, 0.5]):
        body = {"item_id": ids[2], "modifiers": [{"text": t, "weight": w} for t, w in zip(mods, weights)], "top_k": 10}
        hits = client.post("/v1/collections/birds/search", json=body).json()["results"]
        q = composed_query(images[2], texts, weights)
        scores = images @ q
        expected = [i for i in np.argsort(-scores) if i != 2]
        assert [h["id"] for h in hits] == [ids[i] for i in expected]  # the reference is left out
        np.testing.assert_allclose([h["score"] for h in hits], scores[expected], atol=1e-4)
    # an uploaded copy of a stored photo is left out too; a text reference leaves nothing out
    by_image = client.post("/v1/collections/birds/search", json={"image": photo_b64[4], "top_k": 10}).json()["results"]
    assert ids[4] not in [h["id"] for h in by_image] and len(by_image) == 5
    by_text = client.post("/v1/collections/birds/search", json={"text": "a photo of a bird", "top_k": 3}).json()["results"]
    assert len(by_text) == 3
    filtered = client.post("/v1/collections/birds/search", json={"item_id": ids[0], "filter": {"class": cub_photos[1].parent.name}}).json()
    assert [h["id"] for h in filtered["results"]] == [ids[1]]


def test_a_modifier_without_a_weight_steps_by_the_default_chosen_on_validation(filled, photo_b64, cub_photos):
    from bench.collection_quality import OUT as QUALITY
    from service.schemas import DEFAULT_MODIFIER_WEIGHT

    assert DEFAULT_MODIFIER_WEIGHT == json.loads(QUALITY.read_text())["chosen_weight"]  # the figure in docs/collections.md
    client = filled
    ids = [f"{p.parent.name}/{p.name}" for p in cub_photos]
    images = np.array(client.post("/v1/embed", json={"images": photo_b64}).json()["image_embeddings"])
    text = np.array(client.post("/v1/embed", json={"texts": ["a smaller bird"]}).json()["text_embeddings"])
    hits = client.post("/v1/collections/birds/search", json={"item_id": ids[1], "modifiers": [{"text": "a smaller bird"}]}).json()["results"]
    scores = images @ composed_query(images[1], text, [DEFAULT_MODIFIER_WEIGHT])
    expected = [i for i in np.argsort(-scores) if i != 1]
    assert [h["id"] for h in hits] == [ids[i] for i in expected]
    np.testing.assert_allclose([h["score"] for h in hits], scores[expected], atol=1e-4)


def test_multipart_add_with_ids_and_metadata(client, photo_bytes):
    client.put("/v1/collections/mp")
    files = [("images", (f"p{i}.jpg", b, "image/jpeg")) for i, b in enumerate(photo_bytes[:3])]
    data = {"ids": ["a", "b", "c"], "metadata": [json.dumps({"i": i}) for i in range(3)]}
    r = client.post("/v1/collections/mp/items", files=files, data=data)
    assert r.status_code == 200, r.text
    assert r.json()["ids"] == ["a", "b", "c"] and client.get("/v1/collections/mp/items/b").json()["metadata"] == {"i": 1}
    # without ids the file names are the ids; without metadata none is stored
    r = client.post("/v1/collections/mp/items", files=[("images", ("x.jpg", photo_bytes[3], "image/jpeg"))])
    assert r.json()["ids"] == ["x.jpg"] and r.json()["count"] == 4
    bad = client.post("/v1/collections/mp/items", files=files, data={"ids": ["only-one"]})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "ids"
    bad = client.post("/v1/collections/mp/items", files=files[:1], data={"ids": ["z"], "metadata": ["[1]"]})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_metadata"
    broken = client.post("/v1/collections/mp/items", files=[("images", ("bad.jpg", b"not a jpeg", "image/jpeg"))])
    assert broken.status_code == 422 and broken.json()["error"]["field"] == "images"
    assert client.get("/v1/collections/mp/count").json()["count"] == 4  # nothing half-stored


def test_two_replicas_see_each_others_writes(encoder, redis_url, photo_b64, cub_photos):
    items = _items(photo_b64, cub_photos)
    with service_client(encoder, redis_url) as a, service_client(encoder, redis_url) as b:
        a.put("/v1/collections/shared")
        assert b.get("/v1/collections/shared/count").json()["count"] == 0
        a.post("/v1/collections/shared/items", json={"items": items[:4]})
        assert b.get("/v1/collections/shared/count").json()["count"] == 4
        ranked = b.post("/v1/collections/shared/rank", json={"attribute": "a larger bird"}).json()["results"]
        assert {h["id"] for h in ranked} == {it["id"] for it in items[:4]}
        b.post("/v1/collections/shared/items/delete", json={"ids": [items[0]["id"]]})
        b.post("/v1/collections/shared/items", json={"items": [dict(items[1], metadata={"changed": True})]})
        assert a.get("/v1/collections/shared/count").json()["count"] == 3
        assert a.get(f"/v1/collections/shared/items/{items[1]['id']}").json()["metadata"] == {"changed": True}
        # deleted and made again elsewhere: the stale copy is not served
        b.delete("/v1/collections/shared")
        b.put("/v1/collections/shared")
        b.post("/v1/collections/shared/items", json={"items": items[5:]})
        assert [h["id"] for h in a.post("/v1/collections/shared/rank", json={"attribute": "a bird"}).json()["results"]] == [items[5]["id"]]


@pytest.mark.parametrize("kind", ["flat", "int8"])
def test_the_index_setting_chooses_each_replicas_search(encoder, redis_url, photo_b64, cub_photos, kind):
    with service_client(encoder, redis_url, collection_index=kind) as client:
        client.put("/v1/collections/kind")
        client.post("/v1/collections/kind/items", json={"items": _items(photo_b64, cub_photos)[:3]})
        assert client.get("/v1/collections/kind").json()["index"] == kind
        assert len(client.post("/v1/collections/kind/rank", json={"attribute": "a larger bird"}).json()["results"]) == 3


def test_int8_ring_scan_through_the_service_gives_the_flat_results(encoder, redis_url, photo_b64, cub_photos, monkeypatch):
    """Concurrent rank and search requests on a collection large enough for the int8 first pass (here:
    any size, 2 rows a segment) join one ring scan and get what the float pass gives."""
    from concurrent.futures import ThreadPoolExecutor

    from service.vector_index import RingScan

    monkeypatch.setattr("service.vector_index.INT8_MIN_ROWS", 0)
    monkeypatch.setattr("service.vector_index.INT8_SEGMENT_ROWS", 2)
    steps = []
    step = RingScan.step
    monkeypatch.setattr(RingScan, "step", lambda self: steps.append(len(self.active)) or step(self))
    items = _items(photo_b64, cub_photos)
    bodies = [("rank", {"attribute": "a larger bird", "top_k": 6}), ("rank", {"attribute": "a bluer bird", "top_k": 3, "ascending": True}),
              ("rank", {"attribute": "a larger bird", "filter": {"n": [0, 3, 4]}}),
              ("search", {"item_id": items[2]["id"], "modifiers": [{"text": "a smaller bird", "weight": 2.0}], "top_k": 3})] * 3
    results = {}
    for kind in ("flat", "int8"):
        with service_client(encoder, redis_url, collection_index=kind) as client:
            client.put(f"/v1/collections/{kind}")
            client.post(f"/v1/collections/{kind}/items", json={"items": items})
            with ThreadPoolExecutor(4) as pool:
                results[kind] = list(pool.map(lambda b: client.post(f"/v1/collections/{kind}/{b[0]}", json=b[1]).json()["results"], bodies))
    assert steps and max(steps) >= 1
    for flat, int8 in zip(results["flat"], results["int8"]):
        assert [h["id"] for h in int8] == [h["id"] for h in flat] and flat
        np.testing.assert_allclose([h["score"] for h in int8], [h["score"] for h in flat], atol=1e-5)


def test_items_survive_a_restart_and_are_not_reembedded(encoder, redis_url, photo_b64, cub_photos):
    with service_client(encoder, redis_url) as client:
        client.put("/v1/collections/kept")
        client.post("/v1/collections/kept/items", json={"items": _items(photo_b64, cub_photos)})
        before = client.post("/v1/collections/kept/rank", json={"attribute": "a larger bird"}).json()["results"]
    with service_client(encoder, redis_url) as client:
        image_calls = encoder.calls["image"]
        assert client.get("/readyz").json()["collections"]["items"] == 6  # loaded at start-up
        after = client.post("/v1/collections/kept/rank", json={"attribute": "a larger bird"}).json()["results"]
        assert [h["id"] for h in after] == [h["id"] for h in before] and encoder.calls["image"] == image_calls
        np.testing.assert_allclose([h["score"] for h in after], [h["score"] for h in before], atol=1e-6)
        assert [h["metadata"] for h in after] == [h["metadata"] for h in before]


def test_redis_outage_reads_from_the_cache_and_refuses_writes(encoder, tmp_path, photo_b64, cub_photos):
    items = _items(photo_b64, cub_photos)
    server = RedisServer(tmp_path).start()
    try:
        with service_client(encoder, server.url) as client:
            client.put("/v1/collections/c")
            client.post("/v1/collections/c/items", json={"items": items[:4]})
            ranked = client.post("/v1/collections/c/rank", json={"attribute": "a larger bird"}).json()
            server.stop()
            assert wait_for(lambda: client.get("/readyz").json()["redis"]["up"] is False)
            assert client.post("/v1/collections/c/rank", json={"attribute": "a larger bird"}).json() == ranked
            assert client.post("/v1/collections/c/search", json={"item_id": items[0]["id"]}).status_code == 200
            assert client.get("/v1/collections").json()["collections"] == ["c"]
            for r in (client.post("/v1/collections/c/items", json={"items": items[4:]}),
                      client.post("/v1/collections/c/items/delete", json={"ids": [items[0]["id"]]}),
                      client.put("/v1/collections/other"), client.delete("/v1/collections/c")):
                assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable", r.text
            assert client.get("/v1/collections/never-loaded").status_code == 503
            server.start()
            assert wait_for(lambda: client.get("/readyz").json()["redis"]["up"] is True)
            assert client.get("/v1/collections/c/count").json()["count"] == 4  # nothing lost
            assert client.post("/v1/collections/c/items", json={"items": items[4:]}).json()["count"] == 6
    finally:
        server.stop()


def test_collection_writes_need_a_key_with_public_reads(encoder, redis_url, photo_b64):
    with service_client(encoder, redis_url, api_keys=["k1"], public_reads=True) as client:
        assert client.put("/v1/collections/x").status_code == 401
        assert client.put("/v1/collections/x", headers={"X-API-Key": "k1"}).status_code == 201
        item = {"items": [{"id": "a", "image": photo_b64[0]}]}
        assert client.post("/v1/collections/x/items", json=item).status_code == 401
        assert client.post("/v1/collections/x/items", json=item, headers={"X-API-Key": "k1"}).status_code == 200
        assert client.post("/v1/collections/x/items/delete", json={"ids": ["a"]}).status_code == 401
        assert client.post("/v1/collections/x/rank", json={"attribute": "a larger bird"}).status_code == 200
        assert client.post("/v1/collections/x/search", json={"text": "a bird"}).status_code == 200
        assert client.delete("/v1/collections/x").status_code == 401


def test_bad_input_gets_4xx(filled, photo_b64):
    client = filled
    image = photo_b64[0]
    cases = [
        ("put", "/v1/collections/bad name!", None),
        ("put", "/v1/collections/x", {"description": 5}),
        ("get", "/v1/collections/missing", None),
        ("post", "/v1/collections/missing/rank", {"attribute": "a"}),
        ("post", "/v1/collections/birds/items", {"items": []}),
        ("post", "/v1/collections/birds/items", {"items": [{"id": "", "image": image}]}),
        ("post", "/v1/collections/birds/items", {"items": [{"id": "a\nb", "image": image}]}),
        ("post", "/v1/collections/birds/items", {"items": [{"id": "x" * 300, "image": image}]}),
        ("post", "/v1/collections/birds/items", {"items": [{"id": "a", "image": image}, {"id": "a", "image": image}]}),
        ("post", "/v1/collections/birds/items", {"items": [{"id": "a", "image": "not base64!"}]}),
        ("post", "/v1/collections/birds/items", {"items": [{"id": "a", "image": "aGVsbG8="}]}),
        ("post", "/v1/collections/birds/items", {"items": [{"id": "a", "image": image, "metadata": [1]}]}),
        ("post", "/v1/collections/birds/items", {"items": [{"id": "a", "image": image, "metadata": {"k": "v" * 5000}}]}),
        ("post", "/v1/collections/birds/items", {"items": [{"id": str(i), "image": image} for i in range(65)]}),
        ("post", "/v1/collections/birds/items", "{not json"),
        ("post", "/v1/collections/birds/rank", {"attribute": "a", "top_k": 0}),
        ("post", "/v1/collections/birds/rank", {"attribute": "a", "top_k": 10**6}),
        ("post", "/v1/collections/birds/rank", {"attribute": "a" * 3000}),
        ("post", "/v1/collections/birds/rank", {"attribute": "a", "filter": {"k": {"nested": 1}}}),
        ("post", "/v1/collections/birds/rank", {"attribute": "a", "extra": 1}),
        ("post", "/v1/collections/birds/search", {"modifiers": []}),
        ("post", "/v1/collections/birds/search", {"text": "a", "item_id": "b"}),
        ("post", "/v1/collections/birds/search", {"item_id": "no-such-item"}),
        ("post", "/v1/collections/birds/search", {"text": "a", "modifiers": [{"text": "b", "weight": "NaN"}]}),
        ("post", "/v1/collections/birds/search", {"text": "a", "modifiers": [{"text": "b", "weight": 1e9}]}),
        ("post", "/v1/collections/birds/search", {"text": "a", "modifiers": [{"text": "b"}] * 17}),
        ("post", "/v1/collections/birds/search", {"image": "https://example.com/x.jpg"}),
        ("post", "/v1/collections/birds/items/delete", {"ids": []}),
        ("get", "/v1/collections/birds/items?limit=0", None),
        ("get", "/v1/collections/birds/items?offset=-1", None),
        ("get", "/v1/collections/birds/items/nope", None),
    ]
    for method, url, body in cases:
        kwargs = {"content": body} if isinstance(body, str) else ({"json": body} if body is not None else {})
        if isinstance(body, str):
            kwargs["headers"] = {"content-type": "application/json"}
        r = getattr(client, method)(url, **kwargs) if method != "get" else client.get(url)
        assert 400 <= r.status_code < 500, (method, url, r.status_code, r.text)
        assert set(r.json()["error"]) >= {"code", "message"}, r.text
    assert client.get("/v1/collections/birds/count").json()["count"] == 6  # nothing changed


def test_collection_routes_are_in_the_openapi(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/collections", "/v1/collections/{name}", "/v1/collections/{name}/items", "/v1/collections/{name}/rank",
                 "/v1/collections/{name}/search", "/v1/collections/{name}/count", "/v1/collections/{name}/items/delete"):
        assert path in paths, path


def test_a_write_through_the_shared_coherence_mechanism_is_seen_by_the_next_read(encoder, redis_url, photo_b64, cub_photos):
    """The replica's copy follows service.coherence (the class stores' mechanism) and nothing else: an
    item deleted by another process through `CoherentCache.write` alone is gone from the next read."""
    import asyncio

    import redis.asyncio as aioredis

    from service.coherence import CoherentCache, versioned_script

    items = _items(photo_b64, cub_photos)[:3]
    with service_client(encoder, redis_url) as client:
        client.put("/v1/collections/c")
        client.post("/v1/collections/c/items", json={"items": items})
        info = client.get("/v1/collections/c").json()
        assert info["count"] == 3
        base = f"pcclip:coll:{info['model']}:{info['fingerprint']}:c"
        gone = items[0]["id"]

        async def delete_elsewhere():
            async def never(*_):
                raise AssertionError("not read here")

            other = CoherentCache(f"pcclip:collections:{info['model']}:{info['fingerprint']}",
                                  key_of=lambda n: f"pcclip:coll:{info['model']}:{info['fingerprint']}:{n}:meta", load=never)
            other.client = aioredis.from_url(redis_url)
            script = versioned_script("redis.call('HDEL', K[1], A[1]) redis.call('HDEL', K[2], A[1]) return 1, A[2]")
            written = await other.write(script, "c", [base + ":vec", base + ":md"], [gone, json.dumps([gone])])
            await other.client.aclose()
            return written.generation

        assert asyncio.run(delete_elsewhere()) > 0
        assert client.get("/v1/collections/c/count").json()["count"] == 2
        assert client.get(f"/v1/collections/c/items/{gone}").status_code == 404
        ranked = client.post("/v1/collections/c/rank", json={"attribute": "a larger bird"}).json()["results"]
        assert gone not in [h["id"] for h in ranked] and len(ranked) == 2


def test_collections_written_before_the_shared_mechanism_are_kept(encoder, redis_url):
    """A collection in the layout of the previous version (a plain set of names, a `seq` counter and
    a `:log` stream of its own) is adopted at start-up: listed, read, written, deleted; nothing lost."""
    import redis as redis_sync

    vectors = np.eye(3, encoder.dim, dtype="<f4")
    r = redis_sync.Redis.from_url(redis_url)
    base = f"pcclip:coll:{encoder.model_id}:{encoder.fingerprint}:old"
    r.hset(base + ":meta", mapping={"uid": "u1", "name": "old", "dim": encoder.dim, "created_at": "1.0", "description": "kept", "seq": 2})
    r.hset(base + ":vec", mapping={f"v{i}": v.tobytes() for i, v in enumerate(vectors)})
    r.hset(base + ":md", "v0", json.dumps({"k": 1}))
    r.xadd(base + ":log", {"seq": 2, "ids": json.dumps(["v0"])})
    r.sadd(f"pcclip:collections:{encoder.model_id}:{encoder.fingerprint}", "old")
    with service_client(encoder, redis_url) as client:
        assert client.get("/v1/collections").json()["collections"] == ["old"]
        info = client.get("/v1/collections/old").json()
        assert info["count"] == 3 and info["description"] == "kept"
        assert client.get("/v1/collections/old/items/v0").json()["metadata"] == {"k": 1}
        assert client.delete("/v1/collections/old/items/v1").json()["count"] == 2
        assert client.delete("/v1/collections/old").status_code == 200
    assert not [k for k in r.scan_iter(base + "*")]  # the old log went with it


def test_an_add_updates_the_writing_replica_in_process_and_another_from_the_log(redis_url):
    """The replica that wrote applies its own add without reading it back, unless another replica wrote
    in between (then it catches up from the change log, which brings both writes)."""
    import asyncio

    from service.collections import CollectionRegistry
    from service.metrics import ServiceMetrics
    from service.stores import StoreRegistry

    async def main():
        replicas, reads = [], {0: 0, 1: 0}
        for i in range(2):
            stores = StoreRegistry(redis_url, "m", "fp", ServiceMetrics())
            await stores.start()
            registry = CollectionRegistry(stores, "m", "fp", ServiceMetrics())
            await registry.start()
            catch_up = registry.cache.catch_up

            async def counted(coll, ids, i=i, catch_up=catch_up):
                reads[i] += 1
                await catch_up(coll, ids)

            registry.cache.catch_up = counted
            replicas.append(registry)
        a, b = replicas
        coll_a, _ = await a.create("c", 4)
        coll_b = await b.get("c")
        rows = np.eye(4, dtype=np.float32)
        await a.add(coll_a, ["x", "y"], rows[:2], [{"k": [1, "2"]}, None])
        assert reads[0] == 0 and a.cache.cached("c").index.get("x")[1] == {"k": [1, "2"]} and len(a.cache.cached("c").index) == 2
        coll_b = await b.get("c")
        assert reads[1] == 1 and len(coll_b.index) == 2 and coll_b.index.get("x")[1] == {"k": [1, "2"]}
        await b.add(coll_b, ["z"], rows[2:3], [None])
        await a.add(coll_a, ["w"], rows[3:], [None])  # a's copy was behind b's write: read from the log
        assert reads[0] == 1 and sorted(a.cache.cached("c").index.ids(0, 10)) == ["w", "x", "y", "z"]
        assert (await a.get("c")).index.get("z")[0] @ rows[2] > 0.999
        for registry in replicas:
            await registry.stores.stop()

    asyncio.run(main())
