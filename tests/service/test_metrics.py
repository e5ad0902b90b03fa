"""/metrics parses with prometheus-client's parser and counts what happened."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def _samples(client) -> dict:
    out = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_batches_and_caches(client, encoder, photo_b64):
    for _ in range(3):
        assert client.post("/v1/rank", json={"attribute": "The first bird is larger than the second.", "images": photo_b64[:2]}).status_code == 200
    assert client.post("/v1/rank", json={"attribute": "x"}).status_code == 422
    assert client.put("/v1/stores/m", json={"classes": ["a", "b"]}).status_code == 200
    assert client.post("/v1/classify", json={"images": photo_b64[:1], "store": "m"}).status_code == 200
    assert client.post("/v1/classify", json={"images": photo_b64[:1], "store": "missing"}).status_code == 404
    s = _samples(client)
    assert _value(s, "pcclip_requests_total", route="/v1/rank", method="POST", status="200") == 3
    assert _value(s, "pcclip_requests_total", route="/v1/rank", method="POST", status="422") == 1
    assert _value(s, "pcclip_requests_total", route="/v1/classify", method="POST", status="404") == 1
    assert _value(s, "pcclip_requests_total", route="/v1/stores/{name}", method="PUT", status="200") == 1
    assert _value(s, "pcclip_request_seconds_count", route="/v1/rank") == 4
    # the attribute text: one miss, then two hits
    assert _value(s, "pcclip_text_cache_total", result="hit") >= 2
    assert _value(s, "pcclip_text_cache_total", result="miss") >= 1
    assert _value(s, "pcclip_batch_size_count", tower="image") == 4  # 3 ranks + 1 classify
    assert _value(s, "pcclip_batch_size_sum", tower="image") == 7
    assert _value(s, "pcclip_inference_seconds_count", tower="image") == 4
    assert _value(s, "pcclip_queue_wait_seconds_count", tower="image") == 4
    assert _value(s, "pcclip_preprocess_seconds_count", kind="image") == 4
    assert _value(s, "pcclip_store_lookups_total", result="cache_hit") == 1
    assert _value(s, "pcclip_store_lookups_total", result="not_found") == 1
    assert _value(s, "pcclip_store_writes_total", op="put", result="ok") == 1
    assert _value(s, "pcclip_redis_up") == 1
    assert _value(s, "pcclip_model_info", **{k: str(v) for k, v in encoder.info().items()}) == 1
