"""An LRU cache of text embeddings: a repeated text (a class prompt, an attribute) is encoded once."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from service.metrics import ServiceMetrics


class TextEmbeddingCache:
    """text -> embedding [D], least recently used evicted beyond `capacity` (0 disables it).

    Used from the event loop only, so it needs no lock. Keyed by the text alone: one cache
    belongs to one encoder.
    """

    def __init__(self, capacity: int, metrics: ServiceMetrics | None = None):
        self.capacity = int(capacity)
        self.metrics = metrics
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def lookup(self, texts: list[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """(found embeddings by text, distinct texts missing in first-seen order)."""
        found: dict[str, np.ndarray] = {}
        missing: list[str] = []
        for text in texts:
            if text in found or text in missing:
                continue
            emb = self._data.get(text)
            if emb is None:
                missing.append(text)
            else:
                self._data.move_to_end(text)
                found[text] = emb
        if self.metrics:
            self.metrics.text_cache.labels("hit").inc(len(found))
            self.metrics.text_cache.labels("miss").inc(len(missing))
        return found, missing

    def put(self, texts: list[str], embeddings: np.ndarray) -> None:
        if self.capacity <= 0:
            return
        for text, emb in zip(texts, embeddings):
            self._data[text] = emb
            self._data.move_to_end(text)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)
