"""Shared fixtures: the real data in ../shared/data and the default model (loaded once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PCCLIP_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "cub100").is_dir():
        pytest.fail(f"shared data not found at {DATA_DIR} (set PCCLIP_DATA)")
    return DATA_DIR


@pytest.fixture(scope="session")
def pcclip_mini():
    """The default model as the loader assembles it (torch)."""
    from models.loading import load_model

    return load_model("pcclip-mini")


@pytest.fixture(scope="session")
def pcclip_mini_encoder(pcclip_mini):
    return pcclip_mini.encoder(batch_size=16)


@pytest.fixture(scope="session")
def cub_photos(data_dir) -> list[Path]:
    """A few real CUB photos from different classes."""
    root = data_dir / "cub100" / "images"
    classes = sorted(p for p in root.iterdir() if p.is_dir())[:6]
    return [sorted(c.glob("*.jpg"))[0] for c in classes]


@pytest.fixture(scope="session")
def mini_bundle(tmp_path_factory, data_dir):
    """The default model exported once per session (ONNX bundle directory)."""
    from training.export import export_bundle

    return export_bundle("pcclip-mini", tmp_path_factory.mktemp("bundles") / "pcclip-mini", data_dir=data_dir).path


@pytest.fixture(scope="session")
def tiny_vit_checkpoint(tmp_path_factory):
    """The tiny random-weight open_clip ViT saved as a trainer checkpoint (fixed weights)."""
    from models.checkpoints import save_checkpoint
    from models.loading import load_model

    loaded = load_model("pcclip-tiny-vit")
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-vit.pt", loaded.model, "pcclip-tiny-vit", "tiny-vit-random")


@pytest.fixture(scope="session")
def tiny_vit_bundle(tmp_path_factory, data_dir, tiny_vit_checkpoint):
    """That checkpoint exported once per session."""
    from training.export import export_bundle

    return export_bundle(str(tiny_vit_checkpoint), tmp_path_factory.mktemp("bundles") / "tiny-vit", data_dir=data_dir).path
