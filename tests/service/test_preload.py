"""`pcclip serve` loads the bundle while uvicorn imports the app; the app's start-up takes that load."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from models.loading import ModelLoadError
from service.app import create_app
from service.preload import start_preload, take_preloaded
from tests.service.conftest import make_settings

LOAD_ARGS = dict(device="cpu", batch_size=8, max_batch_tokens=1024)


def test_a_preload_is_taken_once_and_only_for_the_same_load(tiny_vit_bundle):
    future = start_preload(str(tiny_vit_bundle), **LOAD_ARGS)
    assert take_preloaded(str(tiny_vit_bundle), **dict(LOAD_ARGS, batch_size=16)) is None  # other arguments: another load
    assert take_preloaded(str(tiny_vit_bundle), **LOAD_ARGS) is None  # ... and the unclaimed preload was dropped
    future.result(timeout=120)
    future = start_preload(str(tiny_vit_bundle), **LOAD_ARGS)
    assert take_preloaded(str(tiny_vit_bundle), **LOAD_ARGS) is future
    assert take_preloaded(str(tiny_vit_bundle), **LOAD_ARGS) is None
    assert future.result(timeout=120).backend == "onnxruntime"


def test_the_start_up_serves_the_preloaded_encoder(tiny_vit_bundle, redis_url):
    settings = make_settings(redis_url, model=str(tiny_vit_bundle), backend="onnx", max_batch_size=8)
    future = start_preload(str(tiny_vit_bundle), device=settings.device, batch_size=8, max_batch_tokens=settings.max_batch_tokens)
    app = create_app(settings)
    with TestClient(app) as client:
        assert app.state.svc.encoder is future.result(timeout=1)  # the same object: not loaded a second time
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/embeddings", json={"input": "a red bird"}).status_code == 200


def test_a_failed_preload_fails_the_start_up_with_its_error(tmp_path, redis_url):
    broken = tmp_path / "broken-bundle"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    settings = make_settings(redis_url, model=str(broken), backend="onnx", max_batch_size=8)
    start_preload(str(broken), device=settings.device, batch_size=8, max_batch_tokens=settings.max_batch_tokens)
    with pytest.raises(ModelLoadError, match="not a pcclip bundle manifest"):
        with TestClient(create_app(settings)):
            pass
