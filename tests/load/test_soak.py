"""Soak (bounded for CI): mixed requests at concurrency 32, zero 5xx, zero lost store writes.

The full 20,000-request soak is `python -m bench.soak` (docs/benchmarks.md); this runs the same
mix and checks with SOAK_REQUESTS requests (default 600) so CI stays within a few minutes.
"""

from __future__ import annotations

import os

import httpx
import pytest

from bench.soak import soak

SOAK_REQUESTS = int(os.environ.get("PCCLIP_SOAK_REQUESTS", "600"))


@pytest.mark.slow
def test_mixed_soak_at_concurrency_32_has_no_5xx_and_loses_no_store_write(serve, redis_process, load_photos_b64):
    server = serve()
    out = soak(server.base_url, redis_process, SOAK_REQUESTS, concurrency=32, deadline_s=400, photos_b64=load_photos_b64)
    assert not out["timed_out"] and out["completed"] == SOAK_REQUESTS
    assert out["server_errors"] == 0, out["server_error_samples"]
    assert out["store_puts_acknowledged"] > 0
    assert out["lost_store_writes"] == []
    # bad input in the mix got its 4xx, the rest succeeded
    assert set(out["by_route"]["bad_input"]) == {422}
    assert all(set(statuses) == {200} for tag, statuses in out["by_route"].items() if tag != "bad_input")
    assert server.alive() and httpx.get(f"{server.base_url}/readyz").status_code == 200
