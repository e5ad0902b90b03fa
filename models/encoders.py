"""One encoder interface over backends (torch here; ONNX Runtime in `models.onnx_backend`).

`encode_images(images) -> float32 [N, D]` and `encode_texts(texts) -> float32 [N, D]`,
L2-normalised, batched, deterministic. Images may be `PIL.Image`s or encoded bytes. The pieces
(`preprocess`, `tokenize`, `encode_pixels`, `encode_tokens`) are public so that a server can
decode and tokenize in its own threads and batch the tower calls.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Sequence, Union

import numpy as np
from PIL import Image

from models.difference import normalize
from models.images import ImageDecodeError, ImageLimits, decode_image
from models.preprocess import PreprocessConfig, preprocess_images
from models.tokenization import Tokenizer

ImageInput = Union[Image.Image, bytes, bytearray, memoryview]


class Encoder(ABC):
    """Base class: subclasses implement `_run_image` and `_run_text` for one batch."""

    backend: str = "abstract"

    def __init__(
        self,
        model_id: str,
        fingerprint: str,
        dim: int,
        preprocess_cfg: PreprocessConfig,
        tokenizer: Tokenizer,
        logit_scale: float = 100.0,
        batch_size: int = 32,
        image_limits: ImageLimits | None = None,
        calibration: dict | None = None,
    ):
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.dim = int(dim)
        self.preprocess_cfg = preprocess_cfg
        self.tokenizer = tokenizer
        self.logit_scale = float(logit_scale)
        self.batch_size = int(batch_size)
        self.image_limits = image_limits or ImageLimits()
        self.calibration = dict(calibration or {"temperature": 0.1, "bias": 0.0, "source": "default"})
        self.calls = {"image": 0, "text": 0}  # tower calls (batches), for metrics and tests
        self.items = {"image": 0, "text": 0}
        self._count_lock = threading.Lock()

    # -- backend hooks -------------------------------------------------------------------
    @abstractmethod
    def _run_image(self, pixels: np.ndarray) -> np.ndarray:
        """One batch [B, 3, H, W] float32 -> raw embeddings [B, D]."""

    @abstractmethod
    def _run_text(self, ids: np.ndarray) -> np.ndarray:
        """One batch [B, L] int64 -> raw embeddings [B, D]."""

    @property
    def provider(self) -> str:
        """Where inference runs (e.g. "cpu", "cuda:0", "CUDAExecutionProvider")."""
        return "cpu"

    # -- public API ----------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return int(self.tokenizer.context_length)

    def decode(self, images: Sequence[ImageInput]) -> list[Image.Image]:
        """Bytes -> RGB images (PIL images pass through). Raises ImageDecodeError naming the item."""
        out = []
        for i, im in enumerate(images):
            if isinstance(im, Image.Image):
                out.append(im if im.mode == "RGB" else im.convert("RGB"))
                continue
            try:
                out.append(decode_image(im, self.image_limits))
            except ImageDecodeError as err:
                raise err.with_index(i) from err
        return out

    def preprocess(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Images -> float32 [N, 3, H, W]."""
        return preprocess_images(self.decode(images), self.preprocess_cfg)

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> int64 [N, context_length] (truncated at the context)."""
        return self.tokenizer(list(texts))

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed pixels -> normalised float32 [N, D], in batches of `batch_size`."""
        return self._batched(np.asarray(pixels, dtype=np.float32), self._run_image, "image")

    def encode_tokens(self, ids: np.ndarray) -> np.ndarray:
        """Token ids -> normalised float32 [N, D], in batches of `batch_size`."""
        return self._batched(np.asarray(ids, dtype=np.int64), self._run_text, "text")

    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Images (PIL or bytes) -> normalised float32 [N, D]."""
        return self.encode_pixels(self.preprocess(images))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> normalised float32 [N, D]."""
        return self.encode_tokens(self.tokenize(texts))

    def release_memory(self) -> None:
        """Hand back the memory the backend keeps between tower calls for the next one (nothing here);
        a server calls it when its towers are idle."""

    def info(self) -> dict:
        """What a client or /readyz wants to know about the model."""
        return {
            "model": self.model_id,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "backend": self.backend,
            "provider": self.provider,
            "context_length": self.context_length,
            "image_size": list(self.preprocess_cfg.image_size),
            "logit_scale": self.logit_scale,
        }

    def _batched(self, arr: np.ndarray, run, tower: str, groups: list[np.ndarray] | None = None) -> np.ndarray:
        """Run `arr` through `run` in tower calls: `groups` of row indices, or chunks of `batch_size`."""
        if len(arr) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if groups is None:
            groups = [np.arange(start, min(start + self.batch_size, len(arr))) for start in range(0, len(arr), self.batch_size)]
        out: np.ndarray | None = None
        for rows in groups:
            emb = np.asarray(run(arr[rows]), dtype=np.float32)
            if out is None:
                out = np.empty((len(arr), emb.shape[1]), dtype=np.float32)
            out[rows] = emb
            with self._count_lock:
                self.calls[tower] += 1
                self.items[tower] += len(rows)
        return normalize(out)


class TorchEncoder(Encoder):
    """Runs a torch CLIP-like module (open_clip CLIP, CustomTextCLIP, PcclipMini)."""

    backend = "torch"

    def __init__(self, model, device: str = "cpu", **kwargs):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        super().__init__(**kwargs)

    @property
    def provider(self) -> str:
        return str(self.device)

    def _run_image(self, pixels: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            x = self.torch.from_numpy(pixels).to(self.device)
            return self.model.encode_image(x).float().cpu().numpy()

    def _run_text(self, ids: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            x = self.torch.from_numpy(ids).to(self.device)
            return self.model.encode_text(x).float().cpu().numpy()
