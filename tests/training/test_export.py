import copy
import json

import numpy as np
import pytest

import training.export as export
from models.onnx_backend import load_bundle_encoder, sha256_file
from models.preprocess import PreprocessConfig
from pcclip.cli import main as pcclip_main

onnx = pytest.importorskip("onnx")


def test_mini_bundle_layout_and_manifest(mini_bundle, pcclip_mini):
    manifest = json.loads((mini_bundle / "manifest.json").read_text())
    assert manifest["model_id"] == pcclip_mini.model_id and manifest["base_model"] == pcclip_mini.base_spec
    assert manifest["fingerprint"] == pcclip_mini.fingerprint
    assert manifest["embed_dim"] == 384 and manifest["context_length"] == 77 and manifest["opset"] == export.DEFAULT_OPSET
    assert manifest["logit_scale"] == pytest.approx(float(pcclip_mini.model.logit_scale.detach().exp()), rel=1e-6)
    assert manifest["tokenizer"]["type"] == "hf_tokenizers"
    assert PreprocessConfig.from_dict(json.loads((mini_bundle / "preprocess.json").read_text())) == pcclip_mini.preprocess_cfg
    assert manifest["preprocess"] == json.loads(json.dumps(pcclip_mini.preprocess_cfg.to_dict()))
    files = {p.relative_to(mini_bundle).as_posix() for p in mini_bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == files >= {"image.onnx", "text.onnx", "tokenizer/tokenizer.json", "preprocess.json"}
    assert all(sha256_file(mini_bundle / f) == h for f, h in manifest["files"].items())
    # parity figures the export measured itself, on real photos and over-long texts
    parity = manifest["parity"]
    for tower in ("images", "texts"):
        assert parity[tower]["max_abs_diff"] <= 1e-4 and parity[tower]["min_cosine"] >= 0.9999
    assert parity["images"]["n"] >= 10 and any(f.startswith("cub100/") for f in parity["image_files"])
    assert any("val2017" in f for f in parity["image_files"])
    assert parity["texts_truncated"] >= 3 and parity["tokenizer"]["identical_ids"]
    assert manifest["quantization"] is None
    # the evaluation summary stored with the weights travels into the manifest (None for untrained heads)
    assert manifest["evaluation"] == json.loads(json.dumps(pcclip_mini.info.get("evaluation")))


def _input_dims(bundle, name):
    graph = onnx.load(str(bundle / name), load_external_data=False).graph
    (inp,) = graph.input
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    return inp.name, [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]


def test_towers_have_a_dynamic_batch_axis_and_text_a_dynamic_sequence_axis(mini_bundle):
    assert _input_dims(mini_bundle, "image.onnx") == ("pixels", ["batch", 3, 224, 224])
    assert _input_dims(mini_bundle, "text.onnx") == ("ids", ["batch", "sequence"])
    manifest = json.loads((mini_bundle / "manifest.json").read_text())
    assert manifest["text"]["shape"] == ["batch", "sequence"] and manifest["text"]["sequence_axis"]["dynamic"] is True
    # parity was measured at several sequence lengths, the full context among them
    lengths = manifest["parity"]["text_sequence_lengths"]
    assert len(lengths) >= 4 and min(lengths) <= 16 and max(lengths) == 77


def test_clip_text_tower_falls_back_to_the_fixed_context(tiny_vit_bundle):
    """open_clip's CLIP text transformer has a fixed [77, 77] causal mask: exported at 77, as before."""
    assert _input_dims(tiny_vit_bundle, "text.onnx") == ("ids", ["batch", 77])
    manifest = json.loads((tiny_vit_bundle / "manifest.json").read_text())
    assert manifest["text"]["sequence_axis"]["dynamic"] is False and manifest["text"]["sequence_axis"]["reason"]
    assert manifest["parity"]["text_sequence_lengths"] == [77]
    assert load_bundle_encoder(tiny_vit_bundle).dynamic_sequence is False


def test_image_tower_keeps_relu6(mini_bundle):
    """EfficientNet-Lite0 uses ReLU6 (exported as Clip 0..6), never Swish (Sigmoid * x)."""
    graph = onnx.load(str(mini_bundle / "image.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert "Clip" in ops and "Sigmoid" not in ops


def test_parity_failure_fails_the_export_and_leaves_no_bundle(tmp_path, data_dir, monkeypatch, tiny_vit_checkpoint, capsys):
    """Export towers whose weights drift from the torch model: the CLI must fail, writing nothing."""
    real_towers = export._tower_modules

    def drifted_towers(model):
        import torch

        other = copy.deepcopy(model)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        return real_towers(other)

    monkeypatch.setattr(export, "_tower_modules", drifted_towers)
    out = tmp_path / "bundle"
    rc = pcclip_main(["export", "--model", str(tiny_vit_checkpoint), "--out", str(out), "--data-dir", str(data_dir)])
    assert rc == 1
    assert "fails parity" in capsys.readouterr().out
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no staging directory left either


def test_existing_output_is_not_overwritten_without_flag(tmp_path, data_dir):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(export.ExportError, match="overwrite"):
        export.export_bundle("pcclip-tiny-vit", out, data_dir=data_dir)
    assert (out / "keep.txt").read_text() == "mine"


def test_int8_quantization_reports_its_own_parity_and_zero_shot(tmp_path, data_dir, tiny_vit_checkpoint, capsys):
    report = tmp_path / "eval.json"
    report.write_text(json.dumps({"cub_zero_shot_top1": 0.5, "source": "test"}))
    out = tmp_path / "tiny-int8"
    rc = pcclip_main([
        "export", "--model", str(tiny_vit_checkpoint), "--out", str(out), "--quantize", "int8",
        "--opset", "17", "--eval-report", str(report), "--data-dir", str(data_dir),
    ])
    assert rc == 0, capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"] == "int8" and manifest["opset"] == 17
    assert manifest["evaluation"] == {"cub_zero_shot_top1": 0.5, "source": "test"}
    assert {"fp32", "int8"} <= set(manifest["parity"])
    assert manifest["parity"]["fp32"]["images"]["max_abs_diff"] <= 1e-4
    int8 = manifest["parity"]["int8"]
    assert 0.5 < int8["images"]["min_cosine"] < 1.0 and int8["images"]["max_abs_diff"] > 0  # really quantized
    q = manifest["quantization_report"]
    assert q["fp32"]["images"] == q["int8"]["images"] == 60 and 0.0 <= q["int8"]["top1"] <= 1.0
    model = onnx.load(str(out / "image.onnx"))
    assert any(n.op_type in ("DynamicQuantizeLinear", "MatMulInteger") for n in model.graph.node)
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {17}
    enc = load_bundle_encoder(out)
    assert enc.info()["quantization"] == "int8"
    emb = enc.encode_texts(["a bird", "a plane"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
