"""Unhandled errors: one JSON 500, logged once (not again by Starlette or the server), counted as 500."""

from __future__ import annotations

import copy
import logging

from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import make_settings


def test_an_unhandled_error_is_one_json_500_logged_once(encoder, redis_url, caplog):
    broken = copy.copy(encoder)

    def tokenize(texts):
        raise RuntimeError("tokenizer exploded")

    broken.tokenize = tokenize
    app = create_app(make_settings(redis_url), encoder=broken)
    # raise_server_exceptions=True: had the error reached Starlette's outermost middleware (which
    # re-raises it to the server, which logs it again), the client would raise here
    with TestClient(app, raise_server_exceptions=True) as client, caplog.at_level(logging.ERROR):
        r = client.post("/v1/embeddings", json={"input": "x"})
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert "exploded" not in r.text
        tracebacks = [rec for rec in caplog.records if rec.exc_info and "exploded" in str(rec.exc_info[1])]
        assert len(tracebacks) == 1
        assert 'pcclip_requests_total{method="POST",route="/v1/embeddings",status="500"} 1.0' in client.get("/metrics").text
