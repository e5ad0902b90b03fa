"""The bundle cache behind `pcclip serve`'s default ONNX backend (service/bundle_cache.py)."""

from __future__ import annotations

import json
import shutil

import pytest

from models.loading import WEIGHTS_DIR
from service import bundle_cache
from service.bundle_cache import BundleBuildError, cached_bundle_path, resolve_bundle, source_fingerprint


def test_fingerprint_follows_the_weights_file(tmp_path):
    weights = tmp_path / "w.safetensors"
    shutil.copyfile(WEIGHTS_DIR / "pcclip-mini.safetensors", weights)
    spec = f"pcclip-mini:{weights}"
    before = source_fingerprint(spec)
    assert before == source_fingerprint(spec) and len(before) == 16
    assert before != source_fingerprint("pcclip-mini") != source_fingerprint("pcclip-mini:base")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # retrained weights: one byte differs
    weights.write_bytes(bytes(data))
    assert source_fingerprint(spec) != before
    assert cached_bundle_path(spec, tmp_path).name == f"pcclip-mini-{source_fingerprint(spec)}"


def test_random_weights_are_not_cached_and_a_bundle_is_served_as_it_is(tmp_path, tiny_vit_bundle):
    assert source_fingerprint("pcclip-tiny-vit") is None and cached_bundle_path("pcclip-tiny-vit", tmp_path) is None
    assert resolve_bundle(str(tiny_vit_bundle), tmp_path) == str(tiny_vit_bundle)


@pytest.mark.slow
def test_a_missing_bundle_is_built_once_then_loaded_from_the_cache(tmp_path, tiny_vit_checkpoint, monkeypatch):
    cache = tmp_path / "cache"
    path = resolve_bundle(str(tiny_vit_checkpoint), cache)  # builds it with `pcclip export` in a child process
    assert path == str(cached_bundle_path(str(tiny_vit_checkpoint), cache))
    manifest = json.loads((cache / path.rsplit("/", 1)[-1] / "manifest.json").read_text())
    assert manifest["model_id"] == "tiny-vit-random" and manifest["parity"]["texts"]["min_cosine"] >= 0.9999

    def no_build(*args, **kwargs):
        raise AssertionError("the cached bundle was rebuilt")

    monkeypatch.setattr(bundle_cache, "build_bundle", no_build)
    assert resolve_bundle(str(tiny_vit_checkpoint), cache) == path


def test_a_failing_build_says_how_to_serve_through_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("PCCLIP_DATA", str(tmp_path / "no-data"))  # the export's parity check has no photos
    with pytest.raises(BundleBuildError, match="--backend torch"):
        resolve_bundle("pcclip-mini:base", tmp_path / "cache")
    assert not any(p.name.startswith("pcclip-mini-") for p in (tmp_path / "cache").iterdir())
