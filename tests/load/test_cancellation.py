"""Work abandoned by its client stops: a real `pcclip serve`, a maximal class set the client gives up on."""

from __future__ import annotations

import time

import httpx
import pytest

from bench.harness import metric_value

BULK = 8  # PCCLIP_BULK_BATCH_SIZE of the server under test


def _text_items_encoded(http: httpx.Client) -> float:
    return metric_value(http.get("/metrics").text, "pcclip_batch_size_sum", tower="text")


@pytest.mark.slow
def test_an_abandoned_class_set_stops_being_encoded(serve):
    server = serve(PCCLIP_BULK_BATCH_SIZE=str(BULK), PCCLIP_TEXT_CACHE_SIZE="0")
    classes = [f"species number {i} of a long list of birds" for i in range(512)]
    templates = [f"a photo of a {{}}, style {j}." for j in range(8)]  # 4,096 texts: the default budget
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        before = _text_items_encoded(http)
        with pytest.raises(httpx.TimeoutException):
            httpx.put(f"{server.base_url}/v1/stores/abandoned", json={"classes": classes, "templates": templates}, timeout=2.0)
        time.sleep(1.0)  # the disconnect is seen, the piece already in the tower finishes
        stopped_at = _text_items_encoded(http)
        time.sleep(3.0)
        after = _text_items_encoded(http)
        metrics = http.get("/metrics").text
        assert after - stopped_at == 0, "texts were still being encoded for a client that left"
        assert 0 < stopped_at - before < len(classes) * len(templates)
        assert metric_value(metrics, "pcclip_requests_cancelled_total") == 1
        assert metric_value(metrics, "pcclip_requests_total", route="/v1/stores/{name}", status="499") == 1
        assert http.get("/v1/stores").json()["stores"] == []  # nothing half-written
        assert http.post("/v1/embeddings", json={"input": "still serving"}).status_code == 200
