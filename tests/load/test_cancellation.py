"""Work abandoned by its client stops: a real `pcclip serve`, a maximal class set the client gives up on."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from bench.harness import metric_value
from tests.service.conftest import wait_for

BULK = 8  # PCCLIP_BULK_BATCH_SIZE of the server under test


def _text_items_encoded(http: httpx.Client) -> float:
    return metric_value(http.get("/metrics").text, "pcclip_batch_size_sum", tower="text")


@pytest.mark.slow
def test_an_abandoned_class_set_stops_being_encoded(serve):
    server = serve(PCCLIP_BULK_BATCH_SIZE=str(BULK), PCCLIP_TEXT_CACHE_SIZE="0")
    classes = [f"species number {i} of a long list of birds" for i in range(512)]
    templates = [f"a photo of a {{}}, style {j}." for j in range(8)]  # 4,096 texts: the default budget
    body = json.dumps({"classes": classes, "templates": templates}).encode()
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        before = _text_items_encoded(http)
        client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        client.sendall(b"PUT /v1/stores/abandoned HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert wait_for(lambda: _text_items_encoded(http) > before, timeout=120.0), "the class set was never encoded"
        client.close()  # the client gives up once encoding is under way
        time.sleep(2.0)  # the disconnect is seen, the piece already in the tower finishes
        stopped_at = _text_items_encoded(http)
        time.sleep(3.0)
        after = _text_items_encoded(http)
        metrics = http.get("/metrics").text
        assert after - stopped_at == 0, "texts were still being encoded for a client that left"
        assert stopped_at - before < len(classes) * len(templates)
        assert metric_value(metrics, "pcclip_requests_cancelled_total") == 1
        assert metric_value(metrics, "pcclip_requests_total", route="/v1/stores/{name}", status="499") == 1
        assert http.get("/v1/stores").json()["stores"] == []  # nothing half-written
        assert http.post("/v1/embeddings", json={"input": "still serving"}).status_code == 200
