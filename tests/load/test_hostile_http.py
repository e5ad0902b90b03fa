"""Hostile input against a real `pcclip serve`: Schemathesis on the service's own OpenAPI document, plus
hand-made attacks (decompression bombs, huge base64, deep JSON, NaN/Infinity, empty lists, 10,000
classes, unicode edge cases). Zero 5xx, the service keeps serving, its memory stays bounded.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
from pathlib import Path

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from PIL import Image

from bench.harness import RedisServer, ServeProcess

MAX_EXAMPLES = int(os.environ.get("PCCLIP_FUZZ_EXAMPLES", "25"))
RSS_GROWTH_LIMIT_MB = 300


@pytest.fixture(scope="module")
def hostile_server(mini_bundle):
    with tempfile.TemporaryDirectory(prefix="pcclip-hostile-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        server = ServeProcess(mini_bundle, redis.url, Path(tmp) / "serve.log",
                              env={"PCCLIP_MAX_BODY_BYTES": str(24 * 1024 * 1024)}).start()
        http = httpx.Client(base_url=server.base_url, timeout=120)
        assert http.put("/v1/stores/fuzz", json={"classes": ["crow", "gull"]}).status_code == 200
        server.rss_start_mb = server.rss_bytes() / 2**20
        try:
            yield server
        finally:
            http.close()
            server.stop()
            redis.stop()


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_openapi_fuzzing_never_gets_a_server_error(hostile_server, mode):
    """Every operation of /openapi.json, MAX_EXAMPLES generated requests each (schema-valid, then schema-violating)."""
    schema = schemathesis.openapi.from_url(f"{hostile_server.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    failures, calls = [], []

    for operation in operations:
        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case):
            response = case.call(base_url=hostile_server.base_url, timeout=120)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}")
            elif response.status_code >= 400 and "error" not in response.json():
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} without an error body")

        try:
            fuzz()
        except Unsatisfiable:  # nothing to violate (no parameters, no body): no invalid request exists
            assert mode == GenerationMode.NEGATIVE
    assert failures == []
    assert len(calls) >= len(operations) and hostile_server.alive()


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _hostile_requests() -> list[tuple[str, str, str, object, set[int]]]:
    """(name, method, path, body: JSON value or raw bytes, allowed statuses)."""
    bomb = base64.b64encode(_png(30_000, 30_000)).decode()  # ~100 kB that would decode to 900 Mpixels
    huge_b64 = "A" * (20 * 1024 * 1024)  # 15 MB decoded, all zeros: not an image
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    deep_obj = ('{"texts":' + "[" * 50_000 + "]" * 50_000 + "}").encode()
    unicode_texts = ["\u0000", "\u202e\u0645\u0631\u062d\u0628\u0627", "\U0001F426" * 500, "e\u0301" * 300, "\ufeff", "\u200b" * 1000,
                     "𝔟𝔦𝔯𝔡", "\ud7ff\ue000\uffff"]
    cases = [
        ("decompression bomb", "POST", "/v1/embed", {"images": [bomb]}, {413}),
        ("bomb in classify", "POST", "/v1/classify", {"images": [bomb], "classes": ["a", "b"]}, {413}),
        ("huge base64", "POST", "/v1/embed", {"images": [huge_b64]}, {413, 422}),
        ("body over the limit", "POST", "/v1/embed", {"images": ["A" * (25 * 1024 * 1024)]}, {413}),
        ("deeply nested JSON array", "POST", "/v1/rank", deep, {400, 422}),
        ("deeply nested JSON in embed", "POST", "/v1/embed", deep_obj, {400, 422}),
        ("NaN alpha", "POST", "/v1/classify", b'{"images": ["AAAA"], "classes": ["a", "b"], "alpha": NaN}', {422}),
        ("Infinity top_k", "POST", "/v1/rank", b'{"attribute": "x", "images": ["AAAA"], "top_k": Infinity}', {422}),
        ("-Infinity alpha in store", "PUT", "/v1/stores/inf", b'{"classes": ["a"], "alpha": -Infinity}', {422}),
        ("huge top_k", "POST", "/v1/rank", {"attribute": "x", "images": ["AAAA"], "top_k": 10**30}, {422}),
        ("empty images", "POST", "/v1/classify", {"images": [], "classes": ["a"]}, {422}),
        ("empty classes", "POST", "/v1/classify", {"images": ["AAAA"], "classes": []}, {422}),
        ("empty store classes", "PUT", "/v1/stores/empty", {"classes": []}, {422}),
        ("empty embed", "POST", "/v1/embed", {}, {200, 422}),
        ("empty embeddings input", "POST", "/v1/embeddings", {"input": []}, {422}),
        ("10,000 classes", "POST", "/v1/classify", {"images": ["AAAA"], "classes": [f"c{i}" for i in range(10_000)]}, {422}),
        ("10,000 classes store", "PUT", "/v1/stores/big", {"classes": [f"c{i}" for i in range(10_000)]}, {422}),
        ("10,000 candidates", "POST", "/v1/explain", {"image_a": "AAAA", "image_b": "AAAA", "candidates": ["x"] * 10_000}, {422}),
        ("unicode texts", "POST", "/v1/embed", {"texts": unicode_texts}, {200}),
        ("blank text", "POST", "/v1/embed", {"texts": ["a bird", " \t"]}, {422}),
        ("unicode classes", "POST", "/v1/classify", {"images": ["AAAA"], "classes": unicode_texts[1:4]}, {422}),
        ("lone surrogate", "POST", "/v1/embed", b'{"texts": ["\\ud800 bird"]}', {200, 422}),
        ("invalid utf-8", "POST", "/v1/embed", b'{"texts": ["\xff\xfe bird"]}', {400, 422}),
        ("unicode store name", "PUT", "/v1/stores/%F0%9F%90%A6", {"classes": ["a"]}, {422}),
        ("template with format fields", "POST", "/v1/classify", {"images": ["AAAA"], "classes": ["a"], "templates": ["{0.__class__}"]}, {422}),
        ("braces template", "POST", "/v1/classify", {"images": ["AAAA"], "classes": ["a"], "templates": ["{} {}"]}, {422}),
        ("wrong types", "POST", "/v1/embed", {"texts": [1, None, {"a": 1}]}, {422}),
        ("not JSON", "POST", "/v1/embed", b"\x00\x01\x02", {422}),
        ("JSON scalar", "POST", "/v1/classify", b"1e999999", {422}),
        ("huge number", "POST", "/v1/classify", b'{"images": ["AAAA"], "classes": ["a"], "alpha": 1e999999}', {422}),
    ]
    return cases


@pytest.mark.slow
def test_hand_made_attacks_get_4xx_and_the_service_keeps_serving(hostile_server, photo_b64_for_hostile):
    http = httpx.Client(base_url=hostile_server.base_url, timeout=120)
    failures = []
    for name, method, path, body, allowed in _hostile_requests():
        kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
        response = http.request(method, path, **kwargs)
        ok = response.status_code in allowed
        if response.status_code >= 400:
            ok = ok and "error" in response.json()
        if not ok:
            failures.append(f"{name}: {response.status_code} {response.text[:200]}")
    assert failures == []
    # still serving, real work included
    assert http.post("/v1/classify", json={"images": photo_b64_for_hostile[:1], "store": "fuzz"}).status_code == 200
    assert hostile_server.alive()


@pytest.mark.slow
def test_memory_stays_bounded_after_the_hostile_runs(hostile_server):
    """Runs after the two tests above (same module-scoped server): RSS grew by less than the limit."""
    rss_mb = hostile_server.rss_bytes() / 2**20
    assert rss_mb - hostile_server.rss_start_mb < RSS_GROWTH_LIMIT_MB, (hostile_server.rss_start_mb, rss_mb)
    assert httpx.get(f"{hostile_server.base_url}/readyz").status_code == 200


@pytest.fixture(scope="module")
def photo_b64_for_hostile(data_dir):
    from bench.harness import b64, sample_photos

    return [b64(p) for p in sample_photos(2, data_dir)]
