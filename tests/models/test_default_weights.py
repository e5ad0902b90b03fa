"""The default model the loader assembles is the trained PC-CLIP pcclip-mini (shipped weights)."""

from __future__ import annotations

import torch

from models.loading import WEIGHTS_DIR, load_model


def test_shipped_weights_are_small_and_present():
    files = [WEIGHTS_DIR / "pcclip-mini.safetensors", WEIGHTS_DIR / "pcclip-mini-base.safetensors"]
    assert all(f.is_file() for f in files)
    assert sum(f.stat().st_size for f in files) <= 25 * 1000 * 1000  # the budget: 25 MB


def test_default_model_is_the_trained_pcclip_one():
    loaded = load_model("pcclip-mini")
    assert loaded.model_id == "pcclip-mini"
    info = loaded.info
    assert info["weights"].endswith("pcclip-mini.safetensors")
    evaluation = info["evaluation"]
    assert {"base", "pcclip"} <= set(evaluation["summary"])
    assert 0.0 <= evaluation["summary"]["pcclip"]["difference acc"] <= 1.0
    assert {t["target"] for t in evaluation["targets"]}
    cal = info["calibration"]
    assert cal["temperature"] > 0 and "source" in cal
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())  # fp16 storage cast back
    assert loaded.encoder().calibration["temperature"] == cal["temperature"]


def test_base_loads_and_differs_from_pcclip():
    base = load_model("pcclip-mini:base")
    pc = load_model("pcclip-mini")
    assert base.model_id == "pcclip-mini:base"
    last = "text.transformer.encoder.layer.5.output.dense.weight"
    assert not torch.equal(base.model.state_dict()[last], pc.model.state_dict()[last])
    assert torch.equal(base.model.state_dict()["visual.head.0.weight"], pc.model.state_dict()["visual.head.0.weight"])
