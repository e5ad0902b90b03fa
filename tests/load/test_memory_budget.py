"""Memory per request is bounded: a real `pcclip serve`, the issue's 64 huge JPEGs, and the worst request allowed.

Images are decoded one at a time, so the peak is set by the largest image allowed
(PCCLIP_MAX_IMAGE_PIXELS, 40 MP by default), not by how many a request holds; the per-request
pixel budget bounds the time. The budget here (2 images at the limit) gives the same peak as the
default's 10 in a fifth of the time; bench/reliability.py measures the default.
"""

from __future__ import annotations

import time

import httpx
import pytest

from bench.reliability import plain_jpeg, post_images_sampling_rss

PEAK_LIMIT_MB = 2048  # the documented bound for the worst request the limits allow
MAX_IMAGE_PIXELS = 40_000_000


@pytest.mark.slow
def test_huge_requests_are_refused_and_the_worst_allowed_one_stays_bounded(serve):
    server = serve(PCCLIP_MAX_REQUEST_PIXELS=str(2 * MAX_IMAGE_PIXELS), PCCLIP_MAX_BODY_BYTES=str(64 * 2**20))
    httpx.post(f"{server.base_url}/v1/embeddings", json={"input": "warm up"}, timeout=60).raise_for_status()
    # the image tower's first calls size its ONNX Runtime arena for a full batch: warm it with
    # ordinary photos, so "before" is a served process and not a cold one
    post_images_sampling_rss(server, [plain_jpeg(640)] * 2)
    before = server.rss_bytes() / 2**20

    # the request: 64 JPEGs of 6000 x 6000 (2.3 billion pixels): refused from the headers
    huge = plain_jpeg(6000)
    r, peak = post_images_sampling_rss(server, [huge] * 64)
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_pixels", r.text
    assert peak - before < 300, f"RSS rose {peak - before:.0f} MB for a refused request"

    # the worst request these limits allow: the pixel budget's worth of images at the per-image limit
    side = int(MAX_IMAGE_PIXELS**0.5)
    worst = plain_jpeg(side)
    r, peak = post_images_sampling_rss(server, [worst] * 2)
    assert r.status_code == 200, r.text
    assert peak < PEAK_LIMIT_MB, f"peak RSS {peak:.0f} MB"
    time.sleep(2.0)
    after = server.rss_bytes() / 2**20
    assert after <= 1.2 * before, f"RSS {after:.0f} MB after, {before:.0f} MB before"
