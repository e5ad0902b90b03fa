"""open_clip's CLIP BPE tokenizer without torch (for exported bundles).

A port of `open_clip.tokenizer.SimpleTokenizer` (itself OpenAI CLIP's, MIT licence) that returns
numpy arrays: the same text cleaning (ftfy, double html unescape, whitespace collapse, lower
case), the same pre-tokenising regex, the same byte-level BPE over the same merges file, and the
same truncation (cut at the context, the last kept token replaced by end-of-text). open_clip's own
module imports torch, so the serving path cannot use it; `tests/models/test_onnx_backend.py`
checks that both produce identical ids.
"""

from __future__ import annotations

import gzip
import html
import string
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import ftfy
import numpy as np
import regex

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
CLEAN_MODES = ("lower", "whitespace", "canonicalize")


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """Reversible map from utf-8 bytes to printable unicode characters (CLIP's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return {(a, b) for a, b in zip(word[:-1], word[1:])}


def _basic_clean(text: str) -> str:
    text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def _whitespace_clean(text: str) -> str:
    return " ".join(text.split()).strip()


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_text(text: str, mode: str = "lower") -> str:
    """open_clip's `clean` functions: "lower", "whitespace" or "canonicalize"."""
    text = _basic_clean(text)
    if mode == "lower":
        return _whitespace_clean(text).lower()
    if mode == "whitespace":
        return _whitespace_clean(text)
    if mode == "canonicalize":
        text = text.replace("_", " ").translate(_PUNCTUATION).lower()
        return " ".join(text.split()).strip()
    raise ValueError(f"unknown clean mode {mode!r} (one of {CLEAN_MODES})")


class ClipBpeTokenizer:
    """Texts -> int64 ids [N, context_length], identical to open_clip's SimpleTokenizer."""

    def __init__(
        self,
        vocab_path: str | Path,
        context_length: int = 77,
        clean: str = "lower",
        additional_special_tokens: Sequence[str] | None = None,
    ):
        if clean not in CLEAN_MODES:
            raise ValueError(f"unknown clean mode {clean!r} (one of {CLEAN_MODES})")
        self.path = str(vocab_path)
        self.context_length = int(context_length)
        self.clean = clean
        self.pad_id = 0
        self.byte_encoder = bytes_to_unicode()
        with gzip.open(self.path) as f:
            lines = f.read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        special = ["<start_of_text>", "<end_of_text>", *(additional_special_tokens or [])]
        vocab.extend(special)
        self.additional_special_tokens = list(additional_special_tokens or [])
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self._cache: dict[str, str] = {t: t for t in special}
        self.pattern = regex.compile(
            "|".join(special) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.sot_token_id = self.encoder["<start_of_text>"]
        self.eot_token_id = self.encoder["<end_of_text>"]

    def bpe(self, token: str) -> str:
        """Space-separated BPE pieces of one pre-token (byte-encoded)."""
        if token in self._cache:
            return self._cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        out = " ".join(word)
        self._cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Ids of one text, without start/end tokens or truncation."""
        ids: list[int] = []
        for token in regex.findall(self.pattern, clean_text(text, self.clean)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(str(text)), self.eot_token_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out
