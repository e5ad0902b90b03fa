"""Tokenizers behind one interface: texts in, int64 ids [N, context_length] out (numpy).

Texts longer than the model's context are truncated (the end is cut, the end-of-text / [SEP]
token kept); shorter ones are padded with the model's pad id. Both backends use the same
tokenizer object, so truncation is identical in torch and in an exported bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np


class Tokenizer(Protocol):
    context_length: int
    pad_id: int

    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer (tokenizer.json), no torch needed."""

    def __init__(self, tokenizer_json: str | Path, context_length: int = 77, pad_id: int = 0):
        from tokenizers import Tokenizer as _Tok

        self.path = str(tokenizer_json)
        self.context_length = int(context_length)
        self.pad_id = int(pad_id)
        self._tok = _Tok.from_file(self.path)
        self._tok.enable_truncation(max_length=self.context_length)
        self._tok.enable_padding(length=self.context_length, pad_id=self.pad_id)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.context_length), dtype=np.int64)
        encodings = self._tok.encode_batch([str(t) for t in texts])
        return np.asarray([e.ids for e in encodings], dtype=np.int64)


class OpenClipTokenizer:
    """Wraps an open_clip tokenizer (needs torch; used by the torch backend)."""

    def __init__(self, tokenizer, context_length: int | None = None):
        self._tok = tokenizer
        self.context_length = int(context_length or getattr(tokenizer, "context_length", 77))
        self.pad_id = 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.context_length), dtype=np.int64)
        ids = self._tok([str(t) for t in texts], context_length=self.context_length)
        return ids.numpy().astype(np.int64)
