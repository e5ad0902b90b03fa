import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.loading import ModelLoadError, load_encoder
from models.onnx_backend import BundleError, BundleIntegrityError, OnnxEncoder, load_bundle_encoder, sha256_file
from tests.conftest import REPO_ROOT

ort = pytest.importorskip("onnxruntime")


def _photos(data_dir):
    cub = data_dir / "cub100" / "images"
    classes = sorted(p for p in cub.iterdir() if p.is_dir())
    photos = [sorted(c.glob("*.jpg"))[-1] for c in classes[5::17]]  # not the export's own parity photos
    return photos + sorted((data_dir / "coco-mini" / "val2017").glob("*.jpg"))[-3:]


TEXTS = [
    "a bird with a bright yellow breast",
    "the first bird is smaller than the second",
    "Ελληνικά, кириллица & “quotes” — done.",
    "perched " * 120,  # longer than the 77-token context
    "",
]


def _assert_parity(a, b):
    assert a.shape == b.shape
    assert float(np.abs(a - b).max()) <= 1e-4
    assert float((a * b).sum(1).min()) >= 0.9999


def test_bundle_matches_torch_model_on_real_photos_and_texts(mini_bundle, pcclip_mini_encoder, data_dir):
    enc = load_encoder(str(mini_bundle), batch_size=3)
    assert isinstance(enc, OnnxEncoder) and enc.backend == "onnxruntime"
    assert enc.fingerprint == pcclip_mini_encoder.fingerprint and enc.dim == pcclip_mini_encoder.dim
    images = [p.read_bytes() for p in _photos(data_dir)]
    _assert_parity(pcclip_mini_encoder.encode_images(images), enc.encode_images(images))
    np.testing.assert_array_equal(pcclip_mini_encoder.tokenize(TEXTS), enc.tokenize(TEXTS))
    _assert_parity(pcclip_mini_encoder.encode_texts(TEXTS), enc.encode_texts(TEXTS))


def test_open_clip_vit_bundle_matches_torch(tiny_vit_bundle, tiny_vit_checkpoint, data_dir):
    from models.loading import load_model

    torch_enc = load_model(str(tiny_vit_checkpoint)).encoder()
    enc = load_bundle_encoder(tiny_vit_bundle)
    assert enc.fingerprint == torch_enc.fingerprint and enc.model_id == "tiny-vit-random"
    assert enc.tokenizer.__class__.__name__ == "ClipBpeTokenizer"
    images = [p.read_bytes() for p in _photos(data_dir)]
    _assert_parity(torch_enc.encode_images(images), enc.encode_images(images))
    np.testing.assert_array_equal(torch_enc.tokenize(TEXTS), enc.tokenize(TEXTS))
    _assert_parity(torch_enc.encode_texts(TEXTS), enc.encode_texts(TEXTS))


def test_dynamic_batch_axis_and_batch_size_do_not_change_results(mini_bundle, data_dir):
    photos = [p.read_bytes() for p in _photos(data_dir)]
    one_by_one = load_bundle_encoder(mini_bundle, batch_size=1).encode_images(photos)
    all_at_once = load_bundle_encoder(mini_bundle, batch_size=64, intra_op_threads=1).encode_images(photos)
    np.testing.assert_allclose(one_by_one, all_at_once, atol=1e-5)
    assert all_at_once.shape == (len(photos), 384)


def test_provider_is_reported_and_session_options_apply(mini_bundle):
    enc = load_bundle_encoder(mini_bundle, intra_op_threads=1)
    expected = "CUDAExecutionProvider" if "CUDAExecutionProvider" in ort.get_available_providers() else "CPUExecutionProvider"
    assert enc.provider == expected
    info = enc.info()
    assert info["provider"] == expected and info["backend"] == "onnxruntime" and info["quantization"] is None
    assert enc.image_session.get_session_options().intra_op_num_threads == 1


def test_the_image_tower_keeps_its_arena_between_runs_and_hands_it_back_on_release(mini_bundle):
    import psutil

    enc = load_bundle_encoder(mini_bundle, batch_size=32)
    assert enc.image_session.get_session_options().enable_cpu_mem_arena
    assert not enc.text_session.get_session_options().enable_cpu_mem_arena  # many small shapes: no arena
    pixels = np.random.default_rng(0).normal(size=(24, 3, 224, 224)).astype(np.float32)
    process = psutil.Process()
    kept = enc.encode_pixels(pixels)  # the arena now holds a batch of 24's tensors (> 100 MB)
    held = process.memory_info().rss
    again = enc.encode_pixels(pixels[:1])
    assert process.memory_info().rss >= held - (16 << 20)  # kept for the next run
    calls = dict(enc.calls)
    enc.release_memory()
    assert held - process.memory_info().rss > 64 << 20  # handed back
    assert enc.calls == calls  # the release is not a tower call
    np.testing.assert_allclose(enc.encode_pixels(pixels[:1]), kept[:1], atol=1e-5)
    np.testing.assert_allclose(again, kept[:1], atol=1e-5)


def _tampered_copy(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


@pytest.mark.parametrize("victim", ["text.onnx", "image.onnx", "tokenizer/bpe_simple_vocab_16e6.txt.gz", "preprocess.json"])
def test_tampered_file_is_refused(tiny_vit_bundle, tmp_path, victim):
    copy = _tampered_copy(tiny_vit_bundle, tmp_path)
    path = copy / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    path.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match=victim.replace(".", r"\.")) as err:
        load_encoder(str(copy))
    assert isinstance(err.value, ModelLoadError)
    assert "sha256" in str(err.value)


def test_missing_file_and_unhashed_file_are_refused(tiny_vit_bundle, tmp_path):
    copy = _tampered_copy(tiny_vit_bundle, tmp_path)
    (copy / "text.onnx").unlink()
    with pytest.raises(BundleIntegrityError, match="missing"):
        load_bundle_encoder(copy)
    copy2 = _tampered_copy(tiny_vit_bundle, tmp_path / "b")
    manifest = json.loads((copy2 / "manifest.json").read_text())
    del manifest["files"]["image.onnx"]  # someone swaps a tower and drops its hash
    (copy2 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleIntegrityError, match="not covered"):
        load_bundle_encoder(copy2)
    del manifest["image"]
    (copy2 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="incomplete"):
        load_bundle_encoder(copy2)
    (copy2 / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="JSON"):
        load_bundle_encoder(copy2)


def test_manifest_hashes_are_the_files_sha256(tiny_vit_bundle):
    manifest = json.loads((tiny_vit_bundle / "manifest.json").read_text())
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((tiny_vit_bundle / rel).read_bytes()).hexdigest() == digest == sha256_file(tiny_vit_bundle / rel)


SERVE_SCRIPT = r"""
import json, sys
from models.loading import load_encoder
enc = load_encoder(sys.argv[1], batch_size=4)
images = [open(p, "rb").read() for p in sys.argv[2:]]
img = enc.encode_images(images)
txt = enc.encode_texts(["a bird", "perched " * 120, "café — “quotes”"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "transformers", "torchvision"))
print(json.dumps({"heavy": heavy, "img": img.tolist(), "txt": txt.tolist(), "provider": enc.provider}))
"""


@pytest.mark.parametrize("which", ["mini_bundle", "tiny_vit_bundle"])
def test_serving_path_imports_no_torch(which, request, data_dir):
    bundle = request.getfixturevalue(which)
    photos = [str(p) for p in _photos(data_dir)[:3]]
    proc = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, str(bundle), *photos],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    # and the fresh interpreter computed the same embeddings as this one
    enc = load_bundle_encoder(bundle)
    np.testing.assert_allclose(np.asarray(out["img"]), enc.encode_images([open(p, "rb").read() for p in photos]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["txt"]), enc.encode_texts(["a bird", "perched " * 120, "café — “quotes”"]), atol=1e-5)


# --- the torch-free CLIP BPE tokenizer is open_clip's, id for id --------------------------------

@pytest.fixture(scope="module")
def clip_tokenizers():
    from models._compat import import_open_clip
    from models.clip_bpe import ClipBpeTokenizer

    open_clip = import_open_clip()
    return open_clip.tokenizer, ClipBpeTokenizer(open_clip.tokenizer.default_bpe())


def _varied_texts(data_dir):
    from training.export import PARITY_TEXTS

    captions = json.loads((data_dir / "coco-mini" / "annotations" / "captions_val2017.json").read_text())["annotations"]
    classes = (data_dir / "cub100" / "classes.txt").read_text().splitlines()
    return [
        *PARITY_TEXTS,
        *(a["caption"] for a in captions[:300]),
        *(f"a photo of a {c.split(',')[1].strip().replace('_', ' ')}." for c in classes),
        "don't it's we're they've I'm you'll he'd DON'T",
        "<start_of_text> literal special tokens <end_of_text>",
        "tab\tnew\nline\r\nnbsp\u00a0zero\u200bwidth",
        "ＦＵＬＬＷＩＤＴＨ ｌｅｔｔｅｒｓ ﬁ ligature",
        "a" * 300 + " " + "b" * 5,
        "!!!???...;;;---___",
    ]


@pytest.mark.parametrize("context_length", [77, 16])
def test_clip_bpe_matches_open_clip(clip_tokenizers, data_dir, context_length):
    oc, ours = clip_tokenizers
    ours.context_length = context_length
    try:
        texts = _varied_texts(data_dir)
        expected = oc.SimpleTokenizer()(texts, context_length=context_length).numpy()
        got = ours(texts)
    finally:
        ours.context_length = 77
    assert got.dtype == np.int64 and got.shape == (len(texts), context_length)
    truncated = expected[:, -1] != 0
    assert truncated.sum() >= 3 and (got[truncated, -1] == ours.eot_token_id).all()
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=120))
def test_clip_bpe_matches_open_clip_on_arbitrary_unicode(clip_tokenizers, text):
    oc, ours = clip_tokenizers
    np.testing.assert_array_equal(ours([text]), oc.tokenize([text]).numpy())


def test_text_batches_run_at_their_longest_member_and_match_the_full_context(mini_bundle):
    enc = load_bundle_encoder(mini_bundle, batch_size=8)
    assert enc.dynamic_sequence and enc.info()["text_sequence"] == "dynamic"
    widths = []
    run = enc.text_session.run
    enc.text_session.run = lambda outputs, feeds: widths.append(feeds["ids"].shape[1]) or run(outputs, feeds)
    try:
        short = enc.encode_texts(["a bird", "a small red bird"])
        mixed = enc.encode_texts(["a bird", "perched " * 120])
    finally:
        enc.text_session.run = run
    assert widths == [8, 8, 77]  # the mixed pair runs apart (length_batches)
    # the same ids at the full context (what a fixed-axis bundle computes) give the same embeddings
    enc.dynamic_sequence = False
    _assert_parity(short, enc.encode_texts(["a bird", "a small red bird"]))
    _assert_parity(mixed, enc.encode_texts(["a bird", "perched " * 120]))


def test_texts_of_different_lengths_run_apart_and_in_their_own_order(mini_bundle):
    enc = load_bundle_encoder(mini_bundle, batch_size=32)
    texts = ["a small bird"] * 6 + ["perched " * 120] + ["a red bird on a branch"] * 5
    widths = []
    run = enc.text_session.run
    enc.text_session.run = lambda outputs, feeds: widths.append(feeds["ids"].shape) or run(outputs, feeds)
    try:
        together = enc.encode_texts(texts)
    finally:
        enc.text_session.run = run
    assert sorted(widths) == [(1, 77), (11, 8)]  # the long text did not pad the short ones to 77
    _assert_parity(together, np.concatenate([enc.encode_texts([t]) for t in texts]))
