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


SEQUENCE_BUCKET = 8  # a dynamic-length text batch is padded to a multiple of this many tokens


def token_lengths(ids: np.ndarray, pad_id: int = 0) -> np.ndarray:
    """Each row's length up to and including its last non-pad token (trailing padding left out).

    Every tokenizer here ends a text with a non-pad end token ([SEP], <end_of_text>), so a pad id
    inside a text (CLIP's id 0 is also "!") never shortens it.
    """
    ids = np.asarray(ids)
    if ids.size == 0:
        return np.zeros(len(ids), dtype=np.int64)
    real = ids != pad_id
    last = ids.shape[1] - np.argmax(real[:, ::-1], axis=1)
    return np.where(real.any(axis=1), last, 0).astype(np.int64)


def bucketed_length(length: int, limit: int, multiple: int = SEQUENCE_BUCKET) -> int:
    """`length` rounded up to a multiple of `multiple` (at least one bucket), at most `limit`."""
    return int(min(limit, max(multiple, -(-int(length) // multiple) * multiple)))


def trim_padding(ids: np.ndarray, pad_id: int = 0, multiple: int = SEQUENCE_BUCKET) -> np.ndarray:
    """Cut a batch's trailing pad columns: keep its longest member's length, bucketed."""
    ids = np.asarray(ids)
    if ids.size == 0:
        return ids
    keep = bucketed_length(int(token_lengths(ids, pad_id).max()), ids.shape[1], multiple)
    return ids[:, :keep]


def length_batches(lengths: np.ndarray, limit: int, max_rows: int, max_tokens: int, slack: float = 0.25) -> list[np.ndarray]:
    """Split texts into tower calls by length (row indices per call), shortest first.

    Each call is padded to its longest member (bucketed), so texts of similar length go together:
    a row joins the current call only while the call's padded size, rows x longest, stays within
    `max_tokens` and within `1 + slack` times what its rows would cost each at its own length.
    One long text then runs apart instead of padding a batch of short ones to its length.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    groups: list[list[int]] = []
    rows_cost = 0
    for i in order:
        need = bucketed_length(int(lengths[i]), limit)
        if groups:
            group = groups[-1]
            padded = (len(group) + 1) * need  # ascending order: this row is the longest so far
            if len(group) < max_rows and padded <= max_tokens and padded <= (1 + slack) * (rows_cost + need):
                group.append(int(i))
                rows_cost += need
                continue
        groups.append([int(i)])
        rows_cost = need
    return [np.asarray(g, dtype=np.int64) for g in groups]
