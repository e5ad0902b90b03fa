import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from models.loading import ModelLoadError, load_encoder, load_model, parse_spec


def test_parse_spec_kinds(tmp_path):
    assert parse_spec("pcclip-mini").kind == "pcclip"
    assert parse_spec("pcclip-mini:base").weights == "base"
    assert parse_spec("ViT-B-32:openai") .kind == "open_clip"
    assert parse_spec("hf-hub:org/repo").kind == "open_clip"
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "manifest.json").write_text("{}")
    assert parse_spec(str(tmp_path / "bundle")).kind == "bundle"
    ckpt = tmp_path / "x.pt"
    ckpt.write_bytes(b"")
    assert parse_spec(str(ckpt)).kind == "checkpoint"
    with pytest.raises(ModelLoadError):
        parse_spec(str(tmp_path / "missing.pt"))


def test_pcclip_mini_builds_offline_from_packages(pcclip_mini):
    model = pcclip_mini.model
    assert pcclip_mini.model_id.startswith("pcclip-mini")
    # the pretrained trunks really are the packaged ones (not random): ImageNet BN statistics
    bn = model.visual.trunk._bn0
    assert float(bn.running_var.mean()) != pytest.approx(1.0, abs=1e-3)
    emb = model.text.transformer.embeddings.word_embeddings.weight
    assert emb.shape == (30522, 384) and float(emb.detach().std()) != pytest.approx(0.02, abs=1e-3)
    for name in ("encode_image", "encode_text", "logit_scale"):
        assert hasattr(model, name)
    assert pcclip_mini.tokenizer.context_length == 77


def test_encoder_outputs_are_normalised_batched_deterministic(pcclip_mini_encoder, cub_photos):
    enc = pcclip_mini_encoder
    images = [p.read_bytes() for p in cub_photos]
    a = enc.encode_images(images)
    b = enc.encode_images(images)
    assert a.shape == (len(images), enc.dim) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, b)
    texts = ["a small bird", "a bird with a red crown"] * 20  # more than one batch
    t = enc.encode_texts(texts)
    assert t.shape == (40, enc.dim)
    np.testing.assert_allclose(t[0], t[2], atol=1e-5)
    assert enc.encode_texts([]).shape == (0, enc.dim)


def test_long_text_is_truncated_at_context(pcclip_mini_encoder):
    enc = pcclip_mini_encoder
    ids = enc.tokenize(["word " * 500, "short"])
    assert ids.shape == (2, enc.context_length)
    assert ids[0, -1] == 102  # [SEP] kept at the end of a truncated text
    long_a = "a bird " * 200 + "that is red"
    long_b = "a bird " * 200 + "that is blue"
    np.testing.assert_allclose(*enc.encode_texts([long_a, long_b]), atol=1e-6)  # the tail is cut


def test_small_open_clip_architecture_random_weights():
    loaded = load_model("pcclip-tiny-vit")
    enc = loaded.encoder()
    out = enc.encode_images([Image.new("RGB", (80, 50), (200, 10, 10))])
    assert out.shape == (1, 64)
    assert enc.encode_texts(["hello"]).shape == (1, 64)


def test_open_clip_local_checkpoint_round_trip(tmp_path):
    import torch

    a = load_model("pcclip-tiny-vit")
    with torch.no_grad():
        for p in a.model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "tiny.pt"
    torch.save(a.model.state_dict(), path)
    b = load_model(f"pcclip-tiny-vit:{path}")
    texts = ["a red bird", "a blue bird"]
    np.testing.assert_allclose(a.encoder().encode_texts(texts), b.encoder().encode_texts(texts), atol=1e-6)
    assert a.fingerprint == b.fingerprint


def test_pcclip_checkpoint_round_trip(tmp_path, pcclip_mini):
    import torch

    from models.checkpoints import save_checkpoint

    loaded = load_model("pcclip-mini:untrained")
    untrained_fingerprint = loaded.fingerprint
    loaded._fingerprint = None
    with torch.no_grad():
        loaded.model.text.head.weight.mul_(0.5).add_(0.01)
    path = save_checkpoint(tmp_path / "ckpt.pt", loaded.model, "pcclip-mini", model_id="my-finetune")
    again = load_model(str(path))
    assert again.model_id == "my-finetune" and again.base_spec == "pcclip-mini"
    texts = ["a bird with a striped breast"]
    np.testing.assert_allclose(loaded.encoder().encode_texts(texts), again.encoder().encode_texts(texts), atol=1e-6)
    assert again.fingerprint == loaded.fingerprint != untrained_fingerprint


def test_partial_weights_round_trip(tmp_path):
    import torch

    from models.checkpoints import save_partial_weights

    a = load_model("pcclip-mini:untrained")
    with torch.no_grad():
        a.model.visual.head[0].weight.mul_(2.0)
    path = save_partial_weights(tmp_path / "w.safetensors", a.model, ["visual.head.0.weight", "logit_scale"], {"note": "test"})
    b = load_model(f"pcclip-mini:{path}")
    assert torch.equal(b.model.visual.head[0].weight, a.model.visual.head[0].weight)
    assert b.info["note"] == "test"


def test_unreachable_hub_fails_fast_with_help():
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_model("ViT-B-32:openai")
    elapsed = time.monotonic() - start
    assert elapsed < 15, f"took {elapsed:.1f}s"
    msg = str(info.value)
    assert "not reachable" in msg and "ViT-B-32:/path/to/" in msg and "HF_HUB_OFFLINE" in msg


def test_unknown_names_fail_clearly():
    with pytest.raises(ModelLoadError, match="unknown model"):
        load_model("no-such-model")
    with pytest.raises(ModelLoadError, match="unknown pretrained tag"):
        load_model("ViT-B-32:no-such-tag")
    with pytest.raises(ModelLoadError, match="unknown weights tag"):
        load_model("pcclip-mini:nonsense")


def test_bundle_seam_without_backend_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ModelLoadError):
        load_encoder(str(tmp_path))


def test_models_core_imports_neither_fastapi_nor_trainer():
    code = (
        "import sys, models, models.loading, models.encoders, models.difference, models.images;"
        "from models.loading import load_model; load_model('pcclip-tiny-vit');"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'service', 'training')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_concept_head_mixes_the_kept_classes_embeddings():
    """The concept head is the classifier's softmax over the kept classes times their embeddings;
    zero embeddings (untrained) add nothing, and held-out classes take no part."""
    import torch
    import torch.nn.functional as F

    from models.pcclip_mini import ConceptHead

    torch.manual_seed(0)
    classifier = torch.nn.Linear(16, 10)
    head = ConceptHead(classifier, 4, 3)
    x = torch.randn(5, 16)
    assert torch.equal(head(x), torch.zeros(5, 3))
    head.index.copy_(torch.tensor([1, 3, 5, 7]))
    with torch.no_grad():
        head.embeddings.copy_(torch.eye(4, 3))
    p = head.probabilities(x)
    assert torch.allclose(p, F.softmax(classifier(x)[:, [1, 3, 5, 7]], dim=1))
    assert torch.allclose(head(x), p @ torch.eye(4, 3))
    top = ConceptHead(classifier, 4, 3, top_k=2)
    top.index.copy_(head.index)
    assert ((top.probabilities(x) > 0).sum(1) == 2).all()
    assert torch.allclose(top.probabilities(x).sum(1), torch.ones(5))


def test_untrained_image_tower_is_the_head_alone():
    import torch

    loaded = load_model("pcclip-mini:untrained")
    visual = loaded.model.visual
    feats = torch.rand(2, visual.width)
    with torch.no_grad():
        assert torch.equal(visual.embed(feats), visual.head(feats))
