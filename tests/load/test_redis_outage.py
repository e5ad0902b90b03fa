"""Redis killed in the middle of a load run and restarted, with no service restart.

Classify on existing stores keeps succeeding (the in-process cache), store writes during the
outage get 503 + Retry-After and succeed when retried after, and no store is lost or corrupted.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from bench.harness import Request, run_load


def _wait_for(predicate, timeout_s: float = 30.0, step_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return False


def _same_results(a: list[dict], b: list[dict]) -> bool:
    """Same labels in the same order, probabilities equal up to batching noise."""
    return all(
        [x["label"] for x in ra["labels"]] == [x["label"] for x in rb["labels"]]
        and all(abs(x["probability"] - y["probability"]) < 1e-4 for x, y in zip(ra["labels"], rb["labels"]))
        for ra, rb in zip(a, b, strict=True)
    )


def _redis_up(base: str) -> bool:
    return httpx.get(f"{base}/readyz", timeout=5).json()["redis"]["up"]


@pytest.mark.slow
def test_redis_killed_mid_load_and_restarted(serve, redis_process, load_photos_b64):
    server = serve()
    base = server.base_url
    pid = server.proc.pid
    http = httpx.Client(base_url=base, timeout=60)
    stores = {"birds": ["crow", "gull", "sparrow", "wren"], "seabirds": ["tern", "gull", "albatross"]}
    for name, classes in stores.items():
        assert http.put(f"/v1/stores/{name}", json={"classes": classes}).status_code == 200
    before = {name: redis_process.client().hgetall(key) for name in stores
              for key in redis_process.client().scan_iter(f"pcclip:store:*:{name}")}
    assert set(before) == set(stores) and all(before.values())
    expected = {name: http.post("/v1/classify", json={"images": load_photos_b64[:2], "store": name}).json()["results"] for name in stores}

    # a classify load in the background, across the outage
    load = [Request("POST", "/v1/classify", {"images": [load_photos_b64[i % 8]], "store": list(stores)[i % 2]}, "classify") for i in range(160)]
    box = {}
    runner = threading.Thread(target=lambda: box.update(report=run_load(base, load, concurrency=8, deadline_s=300)))
    runner.start()
    time.sleep(1.0)
    redis_process.kill()
    assert _wait_for(lambda: not _redis_up(base))

    # writes during the outage: 503 + Retry-After, nothing half-written
    during = http.put("/v1/stores/written-during-outage", json={"classes": ["heron", "egret"]})
    assert during.status_code == 503 and during.json()["error"]["code"] == "store_unavailable"
    assert int(during.headers["retry-after"]) >= 1
    deleted = http.delete("/v1/stores/birds")
    assert deleted.status_code == 503
    # reads of existing stores are served from the cache meanwhile
    assert http.get("/v1/stores/birds").json()["classes"] == stores["birds"]
    during_classify = http.post("/v1/classify", json={"images": load_photos_b64[:2], "store": "seabirds"})
    assert during_classify.status_code == 200 and _same_results(during_classify.json()["results"], expected["seabirds"])
    time.sleep(1.0)

    redis_process.start()  # same port, same directory: the AOF is replayed
    assert _wait_for(lambda: _redis_up(base))
    retried = http.put("/v1/stores/written-during-outage", json={"classes": ["heron", "egret"]})
    assert retried.status_code == 200

    runner.join(timeout=300)
    report = box["report"]
    assert not report.timed_out and len(report.results) == len(load)
    assert report.by_status == {200: len(load)}, report.by_status

    # no store lost or corrupted, the retried write is there, the service never restarted
    after = {name: redis_process.client().hgetall(key) for name in stores
             for key in redis_process.client().scan_iter(f"pcclip:store:*:{name}")}
    assert after == before
    assert sorted(http.get("/v1/stores").json()["stores"]) == ["birds", "seabirds", "written-during-outage"]
    for name in stores:
        assert _same_results(http.post("/v1/classify", json={"images": load_photos_b64[:2], "store": name}).json()["results"], expected[name])
    assert server.alive() and server.proc.pid == pid
    http.close()
