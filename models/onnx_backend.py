"""ONNX Runtime backend of the encoder interface: serves an exported bundle without torch.

A bundle (written by `pcclip export`, see `training/export.py`) is a directory:

    manifest.json          what the model is, how to run it, sha256 of every other file
    image.onnx             pixels float32 [N, 3, H, W] -> L2-normalised embeddings float32 [N, D]
    text.onnx              token ids int64 [N, L]      -> L2-normalised embeddings float32 [N, D]
                           (L is dynamic in bundles exported since the sequence axis was added:
                           each batch is cut to its longest member, bucketed; older bundles
                           take the full context, and the encoder reads which from the graph)
    tokenizer/             tokenizer.json (Hugging Face `tokenizers`) or CLIP's BPE merges file
    preprocess.json        `PreprocessConfig.to_dict()`

Loading verifies every file's sha256 against the manifest and refuses a bundle that does not
match (`BundleIntegrityError`). Nothing here imports torch, open_clip or transformers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from models.encoders import Encoder
from models.loading import ModelLoadError
from models.preprocess import PreprocessConfig
from models.tokenization import length_batches, token_lengths, trim_padding

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "pcclip-onnx-bundle/1"
MANIFEST = "manifest.json"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
DEFAULT_MAX_BATCH_TOKENS = 4096  # padded text tokens per ONNX Runtime run (rows x length)


class BundleError(ModelLoadError):
    """A directory that is not a loadable bundle (missing or malformed manifest or files)."""


class BundleIntegrityError(BundleError):
    """A bundle whose files do not match the sha256 recorded in its manifest."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def bundle_files(root: str | Path) -> dict[str, str]:
    """sha256 of every file under `root` but the manifest, by POSIX relative path."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST
    }


def read_manifest(root: str | Path) -> dict:
    """The parsed manifest of a bundle directory (no verification)."""
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise BundleError(f"{root} is not a bundle: no {MANIFEST}") from err
    except ValueError as err:
        raise BundleError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a pcclip bundle manifest (format {BUNDLE_FORMAT!r})")
    return manifest


def verify_bundle(root: str | Path, manifest: dict | None = None) -> dict:
    """Check every file the manifest lists against its sha256; raise BundleIntegrityError otherwise."""
    root = Path(root)
    manifest = manifest if manifest is not None else read_manifest(root)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{root}/{MANIFEST} lists no files")
    try:
        needed = [manifest["image"]["file"], manifest["text"]["file"], manifest["tokenizer"]["file"], manifest["preprocess_file"]]
    except (KeyError, TypeError) as err:
        raise BundleError(f"{root}/{MANIFEST} is incomplete: no {err}") from err
    unlisted = [f for f in needed if f not in files]
    if unlisted:
        raise BundleIntegrityError(f"bundle {root}: {unlisted} not covered by the manifest's hashes")
    problems = []
    for rel, expected in files.items():
        path = root / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            problems.append(f"{rel}: path outside the bundle")
        elif not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != expected:
            problems.append(f"{rel}: sha256 differs from the manifest")
    if problems:
        raise BundleIntegrityError(
            f"refusing bundle {root}: it does not match its manifest ({'; '.join(problems)}); re-export it with `pcclip export`"
        )
    return manifest


def make_tokenizer(root: Path, spec: dict):
    """The torch-free tokenizer a bundle names."""
    kind = spec.get("type")
    path = root / spec["file"]
    if kind == "hf_tokenizers":
        from models.tokenization import HFTokenizer

        return HFTokenizer(path, context_length=spec["context_length"], pad_id=spec.get("pad_id", 0))
    if kind == "clip_bpe":
        from models.clip_bpe import ClipBpeTokenizer

        return ClipBpeTokenizer(
            path,
            context_length=spec["context_length"],
            clean=spec.get("clean", "lower"),
            additional_special_tokens=spec.get("additional_special_tokens"),
        )
    raise BundleError(f"unknown tokenizer type {kind!r} in bundle {root}")


def choose_providers(providers: list | None = None) -> list:
    """CUDA where onnxruntime-gpu offers it, then CPU; or the caller's list."""
    import onnxruntime as ort

    if providers:
        return list(providers)
    available = ort.get_available_providers()
    return [CUDA_PROVIDER, CPU_PROVIDER] if CUDA_PROVIDER in available else [CPU_PROVIDER]


def _env_flag(name: str) -> bool | None:
    """An on/off environment variable: True for 1/true/yes, False for anything else, None when unset or empty."""
    value = os.environ.get(name, "").strip().lower()
    return None if not value else value in ("1", "true", "yes")


def session_options(intra_op_threads: int | None = None, cpu_mem_arena: bool | None = None, allow_spinning: bool | None = None,
                    arena_by_default: bool = False):
    """ORT session options: full graph optimisation, sequential execution, bounded threads, no spinning.

    The CPU memory arena: `cpu_mem_arena`, else PCCLIP_ORT_CPU_ARENA (1 on, 0 off), else
    `arena_by_default` (the image tower's session). Without it every run allocates its tensors
    afresh and the kernel zero-fills every page of them: a batch of 8 photos through the image CNN
    took 13,300 page faults and 1.5x the CPU time of a run in the arena (docs/benchmarks.md). But
    the arena keeps the peak of every batch size it has seen (a served process grew from 250 MB to
    ~880 MB after batches of 32 images with it on for both towers), so the service hands the image
    tower's back when the tower is idle (`OnnxEncoder.release_memory`), and the text tower, whose
    runs are small and come in many shapes, runs without it.

    The intra-op threads do not spin-wait for work unless `allow_spinning` (or
    PCCLIP_ORT_SPINNING=1) says so: ORT's default spinning burns the CPU that the event loop, the
    image decoding and everything else on a shared machine need between two runs; with it off a
    served text tower answered 1.1-1.3x more texts/s (images 1.1x) on this 2-core machine under load
    (docs/benchmarks.md).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if cpu_mem_arena is None:
        cpu_mem_arena = _env_flag("PCCLIP_ORT_CPU_ARENA")
    opts.enable_cpu_mem_arena = bool(arena_by_default if cpu_mem_arena is None else cpu_mem_arena)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    threads = intra_op_threads if intra_op_threads is not None else int(os.environ.get("PCCLIP_ORT_THREADS", "0"))
    opts.intra_op_num_threads = max(0, int(threads))  # 0: ORT picks (one per physical core)
    opts.inter_op_num_threads = 1
    if allow_spinning is None:
        allow_spinning = bool(_env_flag("PCCLIP_ORT_SPINNING"))
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    opts.log_severity_level = 3
    return opts


def arena_release_options():
    """Run options that hand the CPU memory arena's free chunks back at the end of the run."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


class OnnxEncoder(Encoder):
    """Runs a bundle's two ONNX towers with ONNX Runtime."""

    backend = "onnxruntime"

    def __init__(self, image_session, text_session, manifest: dict, path: str | Path, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 image_arena: bool = False, **kwargs):
        self.image_session = image_session
        self.text_session = text_session
        self.manifest = manifest
        self.path = str(path)
        self._image_input = image_session.get_inputs()[0].name
        # with an arena, release_memory hands it back; without one there is nothing to give
        self._release_options = arena_release_options() if image_arena else None
        text_input = text_session.get_inputs()[0]
        self._text_input = text_input.name
        # A named or unknown dim (str/None) is dynamic; an int is an older bundle's fixed context.
        self.dynamic_sequence = len(text_input.shape) == 2 and not isinstance(text_input.shape[1], int)
        self.max_batch_tokens = int(max_batch_tokens)  # padded tokens per text tower call (rows x length)
        super().__init__(**kwargs)

    @property
    def provider(self) -> str:
        return self.image_session.get_providers()[0]

    @property
    def quantization(self) -> str | None:
        return self.manifest.get("quantization")

    def _run_image(self, pixels: np.ndarray) -> np.ndarray:
        return self.image_session.run(None, {self._image_input: np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def release_memory(self) -> None:
        """Hand the image tower's arena back to the OS. ONNX Runtime shrinks an arena only at the end of
        a run that asks for it, so this is one run of a single blank image (not counted as a tower call)."""
        if self._release_options is not None:
            h, w = self.preprocess_cfg.image_size
            self.image_session.run(None, {self._image_input: np.zeros((1, 3, h, w), np.float32)}, self._release_options)

    def encode_tokens(self, ids: np.ndarray) -> np.ndarray:
        """Token ids -> normalised [N, D]; with a dynamic sequence axis, texts of similar length share
        a tower call (`length_batches`), each call cut to its longest member."""
        ids = np.asarray(ids, dtype=np.int64)
        if not self.dynamic_sequence or len(ids) <= 1:
            return super().encode_tokens(ids)
        pad_id = getattr(self.tokenizer, "pad_id", 0)
        groups = length_batches(token_lengths(ids, pad_id), ids.shape[1], self.batch_size, self.max_batch_tokens)
        return self._batched(ids, self._run_text, "text", groups)

    def _run_text(self, ids: np.ndarray) -> np.ndarray:
        if self.dynamic_sequence:
            ids = trim_padding(ids, getattr(self.tokenizer, "pad_id", 0))
        return self.text_session.run(None, {self._text_input: np.ascontiguousarray(ids, dtype=np.int64)})[0]

    def info(self) -> dict:
        out = super().info()
        out.update(bundle=self.path, quantization=self.quantization, base_model=self.manifest.get("base_model"),
                   text_sequence="dynamic" if self.dynamic_sequence else "fixed")
        return out


def load_bundle_encoder(
    path: str | Path,
    batch_size: int = 32,
    providers: list | None = None,
    intra_op_threads: int | None = None,
    verify: bool = True,
    image_limits=None,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    image_intra_op_threads: int | None = None,
) -> OnnxEncoder:
    """Load a bundle directory as an `OnnxEncoder`, after checking its files' sha256.

    `intra_op_threads` (None: PCCLIP_ORT_THREADS, else ONNX Runtime's choice) applies to both towers;
    `image_intra_op_threads` to the image tower instead (a server running several image calls at once)."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise BundleError(
            "onnxruntime is not installed: install the `cpu` extra (onnxruntime) or the `gpu` extra (onnxruntime-gpu)"
        ) from err
    root = Path(path)
    manifest = read_manifest(root)
    if verify:
        verify_bundle(root, manifest)
    preprocess_cfg = PreprocessConfig.from_dict(json.loads((root / manifest["preprocess_file"]).read_text()))
    tokenizer = make_tokenizer(root, manifest["tokenizer"])
    chosen = choose_providers(providers)
    image_opts = session_options(image_intra_op_threads or intra_op_threads, arena_by_default=True)
    try:
        image_session = ort.InferenceSession(str(root / manifest["image"]["file"]), sess_options=image_opts, providers=chosen)
        text_session = ort.InferenceSession(str(root / manifest["text"]["file"]), sess_options=session_options(intra_op_threads), providers=chosen)
    except Exception as err:  # onnxruntime raises its own exception types
        raise BundleError(f"ONNX Runtime cannot load bundle {root}: {err}") from err
    encoder = OnnxEncoder(
        image_session,
        text_session,
        manifest,
        root,
        max_batch_tokens=max_batch_tokens,
        image_arena=image_opts.enable_cpu_mem_arena,
        model_id=manifest["model_id"],
        fingerprint=manifest["fingerprint"],
        dim=manifest["embed_dim"],
        preprocess_cfg=preprocess_cfg,
        tokenizer=tokenizer,
        logit_scale=manifest.get("logit_scale", 100.0),
        batch_size=batch_size,
        image_limits=image_limits,
        calibration=manifest.get("calibration"),
    )
    if CUDA_PROVIDER in chosen and encoder.provider != CUDA_PROVIDER:
        log.warning("bundle %s: CUDA execution provider requested but unavailable, running on %s", root, encoder.provider)
    log.info(
        "loaded bundle %s (model %s, dim %d, %s) on %s",
        root, encoder.model_id, encoder.dim, manifest.get("quantization") or "fp32", encoder.provider,
    )
    return encoder
