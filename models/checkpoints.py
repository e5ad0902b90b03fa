"""Checkpoint formats the loader understands.

- A full checkpoint (written by the trainer as `.safetensors`; older runs wrote `.pt`):
  {"format": FORMAT, "spec": base model spec, "model_id": str, "state_dict": ..., "extra": {...}}.
  In a `.safetensors` file the tensors are the state dict and the rest is the file's metadata
  (`extra` as JSON). `load_model(path)` rebuilds the base model from `spec` without downloading
  anything and loads the state dict.
- Partial weights (`.safetensors`): the parameters a pcclip model learned on top of its pretrained
  trunks (heads, finetuned layers, logit scale). `pcclip-mini:/path/to/file.safetensors` loads them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

FORMAT = "pcclip-checkpoint/1"


def save_checkpoint(path: str | Path, model, spec: str, model_id: str | None = None, extra: dict | None = None) -> Path:
    """Write a full checkpoint of `model`, built from base `spec`, atomically (`.safetensors` or `.pt` by suffix)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        # tied tensors share storage, which safetensors refuses: each name gets its own copy
        save_file({k: v.contiguous().clone() for k, v in state.items()}, str(tmp),
                  metadata={"format": FORMAT, "spec": spec, "model_id": model_id or path.stem,
                            "extra": json.dumps(extra or {})})
    else:
        torch.save(
            {"format": FORMAT, "spec": spec, "model_id": model_id or path.stem, "state_dict": state, "extra": extra or {}},
            tmp,
        )
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """Load a full checkpoint dict (weights only, no pickled code) from a `.safetensors` or `.pt` file."""
    import torch

    if Path(path).suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a pcclip checkpoint (format {FORMAT})")
        return {"format": FORMAT, "spec": meta["spec"], "model_id": meta.get("model_id"),
                "state_dict": load_file(str(path)), "extra": json.loads(meta.get("extra") or "{}")}
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pcclip checkpoint (format {FORMAT})")
    return ckpt


def save_partial_weights(path: str | Path, model, keys: list[str], metadata: dict | None = None) -> Path:
    """Write the named parameters/buffers of `model` to a safetensors file."""
    from safetensors.torch import save_file

    state = model.state_dict()
    missing = [k for k in keys if k not in state]
    if missing:
        raise KeyError(f"model has no parameters {missing[:5]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()}
    save_file({k: state[k].detach().cpu().contiguous() for k in keys}, str(path), metadata=meta)
    return path


def load_partial_weights(model, path: str | Path) -> list[str]:
    """Load a safetensors file of named parameters into `model`; every key must exist. Returns the keys."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    state = model.state_dict()
    unknown = [k for k in tensors if k not in state]
    if unknown:
        raise KeyError(f"{path}: parameters not in the model: {unknown[:5]}")
    bad = [k for k, v in tensors.items() if tuple(v.shape) != tuple(state[k].shape)]
    if bad:
        raise ValueError(f"{path}: shape mismatch for {bad[:5]}")
    model.load_state_dict(tensors, strict=False)
    return list(tensors)


def state_fingerprint(model) -> str:
    """sha256 over the model's state dict (names, shapes, dtypes, bytes), short hex."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
