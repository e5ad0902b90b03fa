"""An on-disk cache of frozen image features, keyed by the image tower's fingerprint and image path.

The trainer and the evaluation compute frozen image features (embeddings, or pooled trunk
features when an image head trains) once; a rerun, or another model with the same image tower
(a PC-CLIP model and its base), reads them back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm import tqdm

from models.checkpoints import state_fingerprint
from models.images import decode_image
from models.preprocess import PreprocessConfig, preprocess_images

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """$PCCLIP_CACHE/features, default ~/.cache/pcclip/features."""
    return Path(os.environ.get("PCCLIP_CACHE", Path.home() / ".cache" / "pcclip")) / "features"


def image_cache_key(model, preprocess_cfg: PreprocessConfig, level: str) -> str:
    """Fingerprint of the image tower's weights, the preprocessing and the feature level. Trunk
    features depend on the trunk alone, so a new head (or a retrained one) keeps their cache."""
    h = hashlib.sha256()
    tower = model.visual.trunk if level == "trunk" and hasattr(model.visual, "trunk") else model.visual
    h.update(state_fingerprint(tower).encode())
    h.update(json.dumps(preprocess_cfg.to_dict(), sort_keys=True).encode())
    h.update(level.encode())
    return f"{level}-{h.hexdigest()[:16]}"


class ImageFeatureCache:
    """Features of images (by path relative to a data root) for one key, stored in `dir/key/features.pt`."""

    def __init__(self, cache_dir: str | Path, key: str):
        self.path = Path(cache_dir) / key / "features.pt"
        self.key = key

    def _load(self) -> tuple[list[str], torch.Tensor | None]:
        if not self.path.exists():
            return [], None
        blob = torch.load(self.path, map_location="cpu", weights_only=True)
        return list(blob["paths"]), blob["features"]

    def _save(self, paths: list[str], features: torch.Tensor) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"paths": paths, "features": features}, tmp)
        tmp.replace(self.path)

    def cached(self, rel_paths: Sequence[str]) -> bool:
        """True when every path is in the cache."""
        paths, _ = self._load()
        return set(rel_paths) <= set(paths)

    def get(
        self,
        rel_paths: Sequence[str],
        root: str | Path,
        compute: Callable[[torch.Tensor], torch.Tensor],
        preprocess_cfg: PreprocessConfig,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        write: bool = True,
    ) -> torch.Tensor:
        """Features [len(rel_paths), F] float32 on the CPU; computes (and stores) the missing ones."""
        paths, feats = self._load()
        index = {p: i for i, p in enumerate(paths)}
        missing = sorted({p for p in rel_paths if p not in index})
        if missing:
            root = Path(root)
            new = []
            with torch.no_grad():
                for start in tqdm(range(0, len(missing), batch_size), desc=f"image features ({self.key})", unit="batch", disable=None):
                    chunk = missing[start : start + batch_size]
                    images = [decode_image((root / p).read_bytes()) for p in chunk]
                    pixels = torch.from_numpy(preprocess_images(images, preprocess_cfg)).to(device)
                    new.append(compute(pixels).float().cpu())
            new_feats = torch.cat(new)
            feats = new_feats if feats is None else torch.cat([feats, new_feats])
            for p in missing:
                index[p] = len(index)
            paths = paths + missing
            if write:
                self._save(paths, feats)
                log.info("cached %d image features in %s", len(missing), self.path)
        if not rel_paths:
            return torch.zeros((0, 0))
        return feats[torch.tensor([index[p] for p in rel_paths], dtype=torch.long)]
