"""Export a model to a self-contained ONNX bundle that the service loads without torch.

`export_bundle(spec, out)` writes the two towers (`image.onnx`, `text.onnx`: dynamic batch axis,
outputs L2-normalised embeddings), a torch-free tokenizer, the preprocessing parameters and
`manifest.json` (see `models/onnx_backend.py` for the layout). The text tower gets a dynamic
sequence axis where the model allows it (`_export_text_tower`), so that the service runs each
batch at its longest member's length. Before the bundle is moved into place it is loaded through
the serving path (`load_bundle_encoder`) and compared with the torch model on real photos and
varied texts (in mixed-length batches and one at a time, so at several sequence lengths):
max |difference| <= 1e-4 and cosine >= 0.9999 on the normalised embeddings, and identical token
ids. If parity fails the export raises
`ParityError` and leaves no bundle behind.

`quantize="int8"` additionally applies ONNX Runtime's dynamic int8 quantization to both towers;
the bundle then holds the int8 towers, and the manifest gives the int8 parity next to the fp32
parity, plus the zero-shot top-1 of both on a small CUB subset.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.onnx_backend import BUNDLE_FORMAT, MANIFEST, bundle_files, load_bundle_encoder
from models.tokenization import bucketed_length, token_lengths

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
MAX_ABS_TOLERANCE = 1e-4
MIN_COSINE = 0.9999
DEFAULT_DATA_DIR = Path(os.environ.get("PCCLIP_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))

# Texts of varied length: short, punctuation, unicode, html entities, mojibake, and longer than
# any context (77 tokens) so that truncation is compared too.
PARITY_TEXTS = [
    "a bird",
    "a photo of a Red-winged Blackbird.",
    "The first bird is LARGER than the second; its bill is longer & more hooked!",
    "two people riding bikes down a street next to parked cars",
    "café crème, naïve façade — “smart quotes” and ‘apostrophes’ … ellipsis",
    "鳥が木の枝にとまっている",
    "Ünïcödé ñ ß Ελληνικά кириллица 😀🐦 emoji",
    "it&#39;s &amp; isn&#x27;t &lt;b&gt; html &quot;entities&quot;",
    "mojibake: donâ€™t stop",
    "   lots \t of\n\n   whitespace   ",
    "numbers 1234567890 and 3.14159, 1st 2nd 3rd",
    "",
    "a small brown bird with white wing bars " * 12,
    " ".join(f"word{i}" for i in range(200)),
    "x" * 600,
    "The first bird has a more colourful crown, a shorter tail, and a stouter bill than the second bird, "
    "which is otherwise similar in overall size and shape; both perch on thin branches near water, "
    "and the first one is singing while the second one is preening its wing feathers in the sun. "
    "Later, both birds fly off over the lake, the first one higher and faster, calling loudly, while the "
    "second one follows it low across the reeds and lands again on the far shore among the tall grass.",
]


class ExportError(RuntimeError):
    """The export could not produce a bundle."""


class ParityError(ExportError):
    """The exported bundle does not reproduce the torch model within tolerance."""


@dataclass
class ExportResult:
    path: Path
    manifest: dict


# ---------------------------------------------------------------------------------------------
# inputs used to check parity
# ---------------------------------------------------------------------------------------------

def parity_images(data_dir: Path, n_cub: int = 8, n_coco: int = 4) -> list[Path]:
    """Real photos: CUB birds from different classes and COCO scenes (sorted, deterministic)."""
    cub = Path(data_dir) / "cub100" / "images"
    coco = Path(data_dir) / "coco-mini" / "val2017"
    if not cub.is_dir() or not coco.is_dir():
        raise ExportError(f"parity needs the real photos in {data_dir} (cub100/, coco-mini/); pass --data-dir or set PCCLIP_DATA")
    classes = sorted(p for p in cub.iterdir() if p.is_dir())
    step = max(1, len(classes) // n_cub)
    photos = [sorted(c.glob("*.jpg"))[0] for c in classes[::step][:n_cub]]
    photos += sorted(coco.glob("*.jpg"))[:n_coco]
    return photos


def parity_texts(data_dir: Path, n_captions: int = 8) -> list[str]:
    """The built-in varied texts plus a few real COCO captions."""
    texts = list(PARITY_TEXTS)
    captions = Path(data_dir) / "coco-mini" / "annotations" / "captions_val2017.json"
    if captions.exists():
        anns = json.loads(captions.read_text())["annotations"]
        texts += [a["caption"] for a in sorted(anns, key=lambda a: a["id"])[:n_captions]]
    return texts


def embedding_parity(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Max absolute difference and min/mean cosine between two sets of embeddings (row-wise)."""
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape:
        raise ParityError(f"shape mismatch: torch {reference.shape} vs onnx {candidate.shape}")
    cos = (reference * candidate).sum(1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1) + 1e-12
    )
    return {
        "n": int(len(reference)),
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
    }


def within_tolerance(figures: dict) -> bool:
    return figures["max_abs_diff"] <= MAX_ABS_TOLERANCE and figures["min_cosine"] >= MIN_COSINE


# ---------------------------------------------------------------------------------------------
# torch side: towers and tokenizer
# ---------------------------------------------------------------------------------------------

def _tower_modules(model):
    import torch
    import torch.nn.functional as F

    class NormalizedTower(torch.nn.Module):
        """One of the model's encoders (`encode_image` or `encode_text`) with L2-normalised output."""

        def __init__(self, clip, encode: str):
            super().__init__()
            self.clip = clip
            self.encode = encode

        def forward(self, x):
            return F.normalize(getattr(self.clip, self.encode)(x), dim=-1)

    return NormalizedTower(model, "encode_image").eval(), NormalizedTower(model, "encode_text").eval()


def _use_eager_attention(model) -> None:
    """Switch Hugging Face towers to the eager attention implementation (exports cleanly)."""
    for module in model.modules():
        if hasattr(module, "set_attn_implementation") and hasattr(module, "config"):
            module.set_attn_implementation("eager")


def _export_onnx(module, example, path: Path, input_name: str, opset: int, dynamic_sequence: bool = False) -> None:
    """Trace `module` to ONNX with a dynamic batch axis (and, for text, a dynamic sequence axis)."""
    import torch

    # Autograd stays on (weights requiring grad) so that nn.MultiheadAttention takes its
    # composite path, not the fused `_native_multi_head_attention` kernel ONNX cannot express.
    for p in module.parameters():
        p.requires_grad_(True)
    with torch.enable_grad(), warnings.catch_warnings():
        # The tracer's notes on shape checks and constant folding: the graph is verified below
        # by running it (parity), so they are noise here.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx\..*")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=["embedding"],
            dynamic_axes={input_name: {0: "batch", 1: "sequence"} if dynamic_sequence else {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    import onnx

    onnx.checker.check_model(str(path))


def write_tokenizer(loaded, dest: Path) -> dict:
    """Copy a torch-free form of the model's tokenizer into `dest`; return the manifest entry."""
    from models.tokenization import HFTokenizer, OpenClipTokenizer

    dest.mkdir(parents=True, exist_ok=True)
    tok = loaded.tokenizer
    if isinstance(tok, HFTokenizer):
        shutil.copyfile(tok.path, dest / "tokenizer.json")
        return {"type": "hf_tokenizers", "file": f"{dest.name}/tokenizer.json", "context_length": tok.context_length, "pad_id": tok.pad_id}
    if isinstance(tok, OpenClipTokenizer):
        from models._compat import import_open_clip
        from models.clip_bpe import CLEAN_MODES, VOCAB_FILENAME

        open_clip = import_open_clip()
        inner = tok._tok
        if not isinstance(inner, open_clip.tokenizer.SimpleTokenizer) or inner.reduction_fn is not None:
            raise ExportError(
                f"cannot export tokenizer {type(inner).__name__} of {loaded.spec}: only open_clip's CLIP BPE "
                "tokenizer (SimpleTokenizer, truncation) has a torch-free form here"
            )
        clean = next((m for m in CLEAN_MODES if inner.clean_fn is open_clip.tokenizer.get_clean_fn(m)), None)
        if clean is None:
            raise ExportError(f"unknown text cleaning function in {loaded.spec}'s tokenizer")
        shutil.copyfile(open_clip.tokenizer.default_bpe(), dest / VOCAB_FILENAME)
        special = [t for t in inner.encoder if t.startswith("<") and inner.encoder[t] > inner.eot_token_id]
        return {
            "type": "clip_bpe",
            "file": f"{dest.name}/{VOCAB_FILENAME}",
            "context_length": tok.context_length,
            "clean": clean,
            "additional_special_tokens": special,
            "pad_id": 0,
        }
    raise ExportError(f"no torch-free form for tokenizer {type(tok).__name__}")


SEQUENCE_PROBE_TEXTS = ["a bird", "a photo of a small brown bird perched on a thin branch", "perched " * 120]


def _export_text_tower(text_tower, tokenizer, path: Path, opset: int) -> dict:
    """Export the text tower with a dynamic sequence axis where the model allows it.

    A batch then runs at its longest member's length (bucketed, `models.tokenization.trim_padding`)
    instead of the full context. Towers whose graph ties the length to the context (open_clip's
    CLIP text transformer keeps a fixed [context, context] causal mask) fail the probe here: they
    are exported with the fixed context as before. Returns the manifest's `sequence_axis` entry.
    """
    import torch

    from models.tokenization import token_lengths, trim_padding

    example = torch.from_numpy(tokenizer(["a photo", "of a bird"]))
    _export_onnx(text_tower, example, path, "ids", opset, dynamic_sequence=True)
    ids = tokenizer(SEQUENCE_PROBE_TEXTS)
    try:
        import onnxruntime as ort

        quiet = ort.SessionOptions()
        quiet.log_severity_level = 4  # a failing probe is expected for some towers; its error is logged below
        session = ort.InferenceSession(str(path), sess_options=quiet, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            reference = text_tower(torch.from_numpy(ids)).numpy()
        trimmed = np.concatenate([session.run(None, {"ids": trim_padding(ids[i : i + 1], tokenizer.pad_id)})[0] for i in range(len(ids))])
        probe = embedding_parity(reference, trimmed)
        reason = None if within_tolerance(probe) else f"outputs differ at shorter lengths: {probe}"
    except Exception as err:  # ONNX Runtime rejects a graph whose shapes are tied to the context
        reason = f"{type(err).__name__}: {str(err)[:300]}"
    if reason is None:
        lengths = sorted({int(n) for n in token_lengths(ids, tokenizer.pad_id)})
        return {"dynamic": True, "probe_lengths": lengths}
    log.info("text tower has no dynamic sequence axis (%s): exporting it at the fixed context %d", reason, tokenizer.context_length)
    _export_onnx(text_tower, example, path, "ids", opset, dynamic_sequence=False)
    return {"dynamic": False, "reason": reason}


# ---------------------------------------------------------------------------------------------
# parity and evaluation
# ---------------------------------------------------------------------------------------------

def measure_parity(torch_encoder, onnx_encoder, images: list[Path], texts: list[str], data_dir: Path | None = None) -> dict:
    """Compare a bundle with the torch model on the same inputs (through each side's own path)."""
    torch_ids = torch_encoder.tokenize(texts)
    onnx_ids = onnx_encoder.tokenize(texts)
    mismatched = [texts[i][:40] for i in np.flatnonzero((torch_ids != onnx_ids).any(axis=1))]
    pixels = torch_encoder.preprocess([p.read_bytes() for p in images])
    image = embedding_parity(torch_encoder.encode_pixels(pixels), onnx_encoder.encode_images([p.read_bytes() for p in images]))
    # Texts twice through the bundle: in mixed-length batches (each padded to its longest member)
    # and one at a time (each at its own length), so that every length the axis takes is checked.
    reference = torch_encoder.encode_tokens(torch_ids)
    one_by_one = np.concatenate([onnx_encoder.encode_texts([t]) for t in texts]) if texts else reference[:0]
    text = embedding_parity(np.concatenate([reference, reference]), np.concatenate([onnx_encoder.encode_texts(texts), one_by_one]))
    pad_id = torch_encoder.tokenizer.pad_id
    truncated = int((torch_ids[:, -1] != pad_id).sum())
    dynamic = getattr(onnx_encoder, "dynamic_sequence", False)
    lengths = sorted({bucketed_length(n, torch_ids.shape[1]) for n in token_lengths(torch_ids, pad_id)}) if dynamic else [torch_ids.shape[1]]
    return {
        "images": image,
        "texts": text,
        "text_sequence_lengths": lengths,
        "image_files": [str(p.relative_to(data_dir)) if data_dir and p.is_relative_to(data_dir) else str(p) for p in images],
        "texts_truncated": truncated,
        "tokenizer": {"texts": len(texts), "identical_ids": not mismatched, "mismatched": mismatched},
        "tolerance": {"max_abs_diff": MAX_ABS_TOLERANCE, "min_cosine": MIN_COSINE},
    }


def cub_zero_shot_top1(encoder, data_dir: Path, n_classes: int = 20, per_class: int = 3) -> dict:
    """Zero-shot top-1 on a small, fixed CUB test subset (a quick check, not the evaluation suite)."""
    from models.difference import normalize

    root = Path(data_dir) / "cub100"
    classes = [line.split(",", 1)[1].strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    def table(name: str) -> dict[str, str]:
        rows = (line.split(",", 1) for line in (root / name).read_text().splitlines() if line.strip())
        return {k.strip(): v.strip() for k, v in rows}

    is_test = table("train_test_split.txt")
    images_txt = [f for i, f in table("images.txt").items() if is_test.get(i) == "0"]
    chosen = classes[:: max(1, len(classes) // n_classes)][:n_classes]
    photos, labels = [], []
    for label, name in enumerate(chosen):
        files = sorted(f for f in images_txt if f.startswith(name + "/"))[-per_class:]
        photos += [root / "images" / f for f in files]
        labels += [label] * len(files)
    prompts = [f"a photo of a {name.split('.', 1)[-1].replace('_', ' ')}, a type of bird." for name in chosen]
    class_emb = normalize(encoder.encode_texts(prompts))
    image_emb = encoder.encode_images([p.read_bytes() for p in photos])
    pred = (image_emb @ class_emb.T).argmax(1)
    return {"classes": len(chosen), "images": len(photos), "top1": float((pred == np.asarray(labels)).mean())}


def quantize_bundle_towers(src: Path, dst: Path, files: tuple[str, ...]) -> None:
    """Dynamic int8 quantization (weights int8, activations quantized at run time) of each tower."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for name in files:
        quantize_dynamic(
            str(src / name),
            str(dst / name),
            weight_type=QuantType.QInt8,
            per_channel=True,  # per-tensor scales cost the text tower ~0.1 cosine; per-channel ~0.03
            op_types_to_quantize=["MatMul", "Gemm"],
        )


# ---------------------------------------------------------------------------------------------
# the export
# ---------------------------------------------------------------------------------------------

def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def export_bundle(
    spec: str,
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    data_dir: str | Path | None = None,
    eval_report: str | Path | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export `spec` to the bundle directory `out`; raises ParityError (and writes nothing) on failure."""
    import torch

    from models.loading import load_model

    if quantize not in (None, "int8"):
        raise ExportError(f"unknown quantization {quantize!r} (only int8)")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty (use --overwrite)")
    data_dir = Path(data_dir) if data_dir else DEFAULT_DATA_DIR
    images, texts = parity_images(data_dir), parity_texts(data_dir)
    evaluation = json.loads(Path(eval_report).read_text()) if eval_report else None

    loaded = load_model(spec)
    if evaluation is None and isinstance(loaded.info.get("evaluation"), dict):
        evaluation = loaded.info["evaluation"]  # a summary the trainer stored with the weights
    model = loaded.model.float().eval()
    _use_eager_attention(model)
    torch_encoder = loaded.encoder(batch_size=16)
    image_tower, text_tower = _tower_modules(model)
    h, w = loaded.preprocess_cfg.image_size
    context = loaded.tokenizer.context_length

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be read by a service
    try:
        log.info("exporting %s image tower (opset %d)", loaded.model_id, opset)
        _export_onnx(image_tower, torch.zeros(2, 3, h, w), staging / "image.onnx", "pixels", opset)
        log.info("exporting %s text tower", loaded.model_id)
        sequence_axis = _export_text_tower(text_tower, loaded.tokenizer, staging / "text.onnx", opset)
        tokenizer_entry = write_tokenizer(loaded, staging / "tokenizer")
        (staging / "preprocess.json").write_text(json.dumps(loaded.preprocess_cfg.to_dict(), indent=2) + "\n")
        manifest = {
            "format": BUNDLE_FORMAT,
            "model_id": loaded.model_id,
            "base_model": loaded.base_spec,
            "spec": loaded.spec,
            "fingerprint": loaded.fingerprint,
            "embed_dim": loaded.embed_dim,
            "context_length": context,
            "logit_scale": float(model.logit_scale.exp().item()),
            "opset": opset,
            "image": {"file": "image.onnx", "input": "pixels", "shape": ["batch", 3, h, w], "dtype": "float32"},
            "text": {"file": "text.onnx", "input": "ids", "shape": ["batch", "sequence" if sequence_axis["dynamic"] else context],
                     "dtype": "int64", "sequence_axis": sequence_axis},
            "output": {"name": "embedding", "shape": ["batch", loaded.embed_dim], "normalised": True},
            "tokenizer": tokenizer_entry,
            "preprocess_file": "preprocess.json",
            "preprocess": loaded.preprocess_cfg.to_dict(),
            "quantization": None,
            "calibration": loaded.info.get("calibration"),
            "model_info": {k: v for k, v in loaded.info.items() if isinstance(v, (str, int, float, bool))},
            "evaluation": evaluation,
            "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
        }

        def seal() -> None:
            manifest["files"] = bundle_files(staging)
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")

        seal()
        onnx_encoder = load_bundle_encoder(staging, batch_size=5)  # odd batch size: exercises the dynamic axis
        parity = measure_parity(torch_encoder, onnx_encoder, images, texts, data_dir)
        manifest["parity"] = parity
        log.info(
            "parity fp32: images max|d| %.2e cos %.7f; texts max|d| %.2e cos %.7f; tokenizer identical: %s",
            parity["images"]["max_abs_diff"], parity["images"]["min_cosine"],
            parity["texts"]["max_abs_diff"], parity["texts"]["min_cosine"], parity["tokenizer"]["identical_ids"],
        )
        if not (within_tolerance(parity["images"]) and within_tolerance(parity["texts"]) and parity["tokenizer"]["identical_ids"]):
            raise ParityError(f"bundle of {loaded.model_id} fails parity with the torch model: {json.dumps(parity)}")

        if quantize == "int8":
            fp32_dir = Path(tempfile.mkdtemp(prefix=".fp32.", dir=out.parent))
            try:
                for name in ("image.onnx", "text.onnx"):
                    shutil.move(str(staging / name), fp32_dir / name)
                quantize_bundle_towers(fp32_dir, staging, ("image.onnx", "text.onnx"))
                manifest["quantization"] = "int8"
                seal()
                int8_encoder = load_bundle_encoder(staging, batch_size=5)
                int8 = measure_parity(torch_encoder, int8_encoder, images, texts, data_dir)
                fp32_top1 = cub_zero_shot_top1(onnx_encoder, data_dir)
                int8_top1 = cub_zero_shot_top1(int8_encoder, data_dir)
                manifest["parity"] = {"fp32": parity, "int8": int8}
                manifest["quantization_report"] = {
                    "method": "onnxruntime.quantization.quantize_dynamic, int8 per-channel weights, MatMul/Gemm",
                    "evaluator": "CUB zero-shot top-1 on a small fixed subset (training/export.py); "
                    "`pcclip eval` (training/evaluate.py) is the full evaluation",
                    "fp32": fp32_top1,
                    "int8": int8_top1,
                    "top1_change_points": 100.0 * (int8_top1["top1"] - fp32_top1["top1"]),
                }
                log.info(
                    "parity int8: images cos %.5f, texts cos %.5f; CUB zero-shot top-1 %.3f -> %.3f",
                    int8["images"]["min_cosine"], int8["texts"]["min_cosine"], fp32_top1["top1"], int8_top1["top1"],
                )
            finally:
                shutil.rmtree(fp32_dir, ignore_errors=True)
        seal()
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, manifest)
