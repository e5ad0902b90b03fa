"""End to end: `pcclip serve` in a real uvicorn process on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.service.conftest import free_port


@pytest.mark.slow
def test_pcclip_serve_end_to_end(redis_url, photo_b64, tmp_path, mini_bundle):
    """`pcclip serve --model pcclip-mini` serves the model's cached ONNX bundle, without libtorch."""
    from service.bundle_cache import cached_bundle_path

    cache = tmp_path / "bundles"
    key = cached_bundle_path("pcclip-mini", cache)
    cache.mkdir()
    key.symlink_to(mini_bundle)  # the session's export of the same model stands in for a cached build
    port = free_port()
    env = dict(os.environ, PCCLIP_REDIS_URL=redis_url, PCCLIP_API_KEYS="e2e-key", PCCLIP_LOG_LEVEL="warning", PCCLIP_MAX_BODY_BYTES="1000000",
               PCCLIP_BUNDLE_CACHE_DIR=str(cache))
    env.pop("PCCLIP_BACKEND", None)
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pcclip", "serve", "--host", "127.0.0.1", "--port", str(port), "--model", "pcclip-mini"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"{base}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        log.seek(0)
        assert ready is not None and ready.status_code == 200, log.read()[-3000:]
        assert ready.json()["model"].startswith("pcclip-mini") and ready.json()["redis"]["up"] is True
        assert ready.json()["backend"] == "onnxruntime"
        maps = open(f"/proc/{proc.pid}/maps").read()
        assert "libtorch" not in maps and "onnxruntime" in maps
        headers = {"Authorization": "Bearer e2e-key"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
            rank = http.post("/v1/rank", json={"attribute": "The first bird is larger than the second.", "images": photo_b64[:3]})
            assert rank.status_code == 200 and len(rank.json()["ranking"]) == 3
            assert http.put("/v1/stores/e2e", json={"classes": ["crow", "gull"]}).status_code == 200
            cls = http.post("/v1/classify", json={"images": photo_b64[:2], "store": "e2e"})
            assert cls.status_code == 200 and len(cls.json()["results"]) == 2
            bad = http.post("/v1/embed", json={"images": ["!!"]})
            assert bad.status_code == 422 and bad.json()["error"]["index"] == 0
            assert httpx.post(f"{base}/v1/embeddings", json={"input": "x"}).status_code == 401
            # a chunked body (no Content-Length) past the limit is cut off with 413
            streamed = http.post("/v1/embed", content=(b" " * 65536 for _ in range(40)), headers={"content-type": "application/json"})
            assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "body_too_large"
            assert http.get("/healthz").status_code == 200
            assert 'pcclip_requests_total{method="POST",route="/v1/rank",status="200"} 1.0' in http.get("/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    # a graceful shutdown: uvicorn finishes and re-raises SIGTERM (it was not killed)
    assert proc.returncode in (0, -signal.SIGTERM)
