"""Search backends of collections: the `VectorIndex` interface and `ExactIndex`, exact in-process search.

`ExactIndex` keeps a collection's normalised vectors in one contiguous matrix (float32 or float16)
and scores a batch of queries with one pass over it: `scores = M @ Q.T` (one BLAS product for
float32), then the top k per query by a block-maximum threshold (`top_k_rows`). Exact (no approximation); the cost is linear in the collection (docs/collections.md has
the latency and memory at 10k, 100k and 1M vectors). A vector database (for example Qdrant, see
the docs) can take over behind the same interface when a collection outgrows one machine.

Concurrency: mutations (`upsert`, `remove`) happen on one thread (the event loop); `search` may
run on another. Rows below the published size never change (an upsert of an existing id marks the
old row dead and appends), the matrix is only replaced by a larger copy, and compaction builds new
arrays: a search works on the `_View` it started with and sees a consistent collection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

import numpy as np

DTYPES = {"float32": np.float32, "float16": np.float16}
SCORE_CHUNK_ROWS = 65_536
_COMPACT_MIN_DEAD = 1024


@dataclass(frozen=True)
class Hit:
    """One search result: the item's id, its score (cosine) and its metadata."""

    id: str
    score: float
    metadata: dict | None


@dataclass(frozen=True)
class Query:
    """One query of a search pass: a normalised vector, how many results, and which rows to leave out."""

    vector: np.ndarray
    k: int
    allowed: np.ndarray | None = None  # bool [rows] of the view, None = all
    excluded_rows: tuple[int, ...] = ()


class VectorIndex(Protocol):
    """What a collection's search backend offers (`ExactIndex` here; a vector database can implement it)."""

    dim: int

    def __len__(self) -> int: ...
    def upsert(self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict | None]) -> None: ...
    def remove(self, ids: Iterable[str]) -> int: ...
    def get(self, item_id: str) -> tuple[np.ndarray, dict | None] | None: ...
    def ids(self, offset: int, limit: int) -> list[str]: ...
    def snapshot(self): ...
    def search(self, queries: Sequence["Query"], view=None) -> list[list[Hit]]: ...
    def row_of(self, item_id: str) -> int | None: ...
    def filter_mask(self, where: dict) -> np.ndarray: ...
    @property
    def nbytes(self) -> int: ...


@dataclass(frozen=True)
class _View:
    vectors: np.ndarray  # [capacity, D]; rows < size are written
    alive: np.ndarray  # bool [capacity]
    ids: list  # row -> id (rows < size)
    metadata: list  # row -> dict | None
    size: int


def _value_key(value) -> str | None:
    """The postings key of a metadata value (scalars only; 1 and 1.0 are the same)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return json.dumps(int(value) if float(value).is_integer() else float(value))
    return None


class ExactIndex:
    """Exact cosine search over an in-process matrix; `dtype` float32 (default) or float16 (half the memory)."""

    def __init__(self, dim: int, dtype: str = "float32", capacity: int = 1024):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
        self.dim = int(dim)
        self.dtype = DTYPES[dtype]
        self._row: dict[str, int] = {}
        self._postings: dict[str, dict[str, set[int]]] = {}
        self._dead = 0
        self._view = _View(np.zeros((max(1, capacity), self.dim), self.dtype), np.zeros(max(1, capacity), bool), [], [], 0)

    def __len__(self) -> int:
        return len(self._row)

    @property
    def nbytes(self) -> int:
        """Bytes held by the matrix and the alive mask (ids and metadata not counted)."""
        return int(self._view.vectors.nbytes + self._view.alive.nbytes)

    # -- mutations (one thread) ----------------------------------------------------------------
    def upsert(self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict | None]) -> None:
        """Add items, replacing those with the same id. `vectors` [N, D] are normalised here."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
        last = {item_id: i for i, item_id in enumerate(ids)}  # a repeated id in one call: the last one wins
        keep = sorted(last.values())
        self.remove([ids[i] for i in keep if ids[i] in self._row], compact=False)
        view = self._view
        size, need = view.size, view.size + len(keep)
        matrix, alive = view.vectors, view.alive
        if need > len(matrix):
            capacity = max(need, int(len(matrix) * 1.5) + 1)
            matrix = np.zeros((capacity, self.dim), self.dtype)
            matrix[:size] = view.vectors[:size]
            alive = np.zeros(capacity, bool)
            alive[:size] = view.alive[:size]
        matrix[size:need] = vectors[keep].astype(self.dtype)
        alive[size:need] = True
        for offset, i in enumerate(keep):
            row = size + offset
            view.ids.append(ids[i])
            md = metadata[i] or None
            view.metadata.append(md)
            self._row[ids[i]] = row
            self._index_metadata(row, md)
        self._view = _View(matrix, alive, view.ids, view.metadata, need)

    def remove(self, ids: Iterable[str], compact: bool = True) -> int:
        """Remove items by id; returns how many existed."""
        removed = 0
        view = self._view
        for item_id in ids:
            row = self._row.pop(item_id, None)
            if row is None:
                continue
            view.alive[row] = False
            md = view.metadata[row]
            if md:
                for key, value in md.items():
                    postings = self._postings.get(key, {}).get(_value_key(value))
                    if postings is not None:
                        postings.discard(row)
            removed += 1
        self._dead += removed
        if compact and self._dead >= max(_COMPACT_MIN_DEAD, view.size // 4):
            self._compact()
        return removed

    def _compact(self) -> None:
        view = self._view
        rows = np.flatnonzero(view.alive[: view.size])
        matrix = np.zeros((max(1, len(rows)), self.dim), self.dtype)
        matrix[: len(rows)] = view.vectors[rows]
        alive = np.zeros(len(matrix), bool)
        alive[: len(rows)] = True
        ids = [view.ids[r] for r in rows]
        metadata = [view.metadata[r] for r in rows]
        self._row = {item_id: i for i, item_id in enumerate(ids)}
        self._postings = {}
        for row, md in enumerate(metadata):
            self._index_metadata(row, md)
        self._dead = 0
        self._view = _View(matrix, alive, ids, metadata, len(rows))

    def _index_metadata(self, row: int, md: dict | None) -> None:
        for key, value in (md or {}).items():
            vk = _value_key(value)
            if vk is not None:
                self._postings.setdefault(key, {}).setdefault(vk, set()).add(row)

    # -- reads ------------------------------------------------------------------------------------
    def row_of(self, item_id: str) -> int | None:
        return self._row.get(item_id)

    def get(self, item_id: str) -> tuple[np.ndarray, dict | None] | None:
        """(normalised float32 vector, metadata) of an item, or None."""
        row = self._row.get(item_id)
        if row is None:
            return None
        view = self._view
        return view.vectors[row].astype(np.float32), view.metadata[row]

    def ids(self, offset: int, limit: int) -> list[str]:
        """Live ids in insertion order (after compaction: still in order), `limit` from `offset`."""
        view = self._view
        live = np.flatnonzero(view.alive[: view.size])[offset : offset + limit]
        return [view.ids[r] for r in live]

    def filter_mask(self, where: dict) -> np.ndarray:
        """bool [rows of `snapshot()`]: items whose metadata has, for every key, the value (or one of them, for a list)."""
        view = self._view
        mask = view.alive[: view.size].copy()
        for key, wanted in where.items():
            values = wanted if isinstance(wanted, list) else [wanted]
            rows: set[int] = set()
            for value in values:
                rows |= self._postings.get(key, {}).get(_value_key(value), set())
            keep = np.zeros(view.size, bool)
            if rows:
                keep[np.fromiter(rows, dtype=np.int64, count=len(rows))] = True
            mask &= keep
        return mask

    def snapshot(self) -> _View:
        """The current state, for `filter_mask`/`row_of` results and a later `search` to agree on rows."""
        return self._view

    def search(self, queries: Sequence[Query], view: _View | None = None) -> list[list[Hit]]:
        """Top-k hits per query (highest cosine first), one pass over the matrix for all queries.

        `view` (from `snapshot()`) is the state the queries' row masks were made against.
        """
        view = view or self._view
        n = view.size
        if not queries:
            return []
        scores = self.scores(np.stack([np.asarray(x.vector, np.float32) for x in queries]), view)  # [B, n]
        if n and not view.alive[:n].all():
            scores[:, ~view.alive[:n]] = -np.inf
        results = []
        for s, query in zip(scores, queries):
            if query.allowed is not None:
                s[~query.allowed[:n]] = -np.inf
            s[[r for r in query.excluded_rows if 0 <= r < n]] = -np.inf
            rows = top_k_rows(s, query.k)
            vals = s[rows]
            order = np.lexsort((rows, -vals))  # highest score first, ties by insertion order
            results.append([Hit(view.ids[rows[i]], float(vals[i]), view.metadata[rows[i]]) for i in order if np.isfinite(vals[i])])
        return results

    def scores(self, queries: np.ndarray, view: _View | None = None) -> np.ndarray:
        """Cosine of every row of the view with every query: float32 [B, rows], a new array.

        float32: one BLAS product over the matrix as it is stored (rows < size are one contiguous
        block, no copy). float16: numpy has no float16 BLAS, so chunks of SCORE_CHUNK_ROWS rows are
        widened into one reused float32 buffer first (half the memory, slower).
        """
        view = view or self._view
        n = view.size
        q = np.ascontiguousarray(queries, np.float32).T  # [D, B]
        matrix = view.vectors[:n]
        if matrix.dtype == np.float32:
            return np.ascontiguousarray((matrix @ q).T)
        out = np.empty((n, q.shape[1]), np.float32)
        buffer = np.empty((min(n, SCORE_CHUNK_ROWS), self.dim), np.float32)
        for start in range(0, n, SCORE_CHUNK_ROWS):
            stop = min(n, start + SCORE_CHUNK_ROWS)
            wide = buffer[: stop - start]
            np.copyto(wide, matrix[start:stop])
            np.matmul(wide, q, out=out[start:stop])
        return np.ascontiguousarray(out.T)


TOP_K_BLOCK = 1024


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores (any order; ties at the k-th value: any of them).

    For long score vectors: the k-th largest of the maxima of blocks of TOP_K_BLOCK scores is a
    lower bound of the k-th largest score (k blocks each hold a score at least that high), so only
    the scores at or above it are candidates: two cheap passes instead of a selection over all.
    """
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, np.int64)
    if k == n:
        return np.arange(n)
    blocks = n // TOP_K_BLOCK
    if blocks >= 4 * k:
        threshold = np.partition(scores[: blocks * TOP_K_BLOCK].reshape(blocks, TOP_K_BLOCK).max(axis=1), blocks - k)[blocks - k]
        candidates = np.flatnonzero(scores >= threshold)
        if len(candidates) <= k:
            return candidates
        return candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
    return np.argpartition(-scores, k - 1)[:k]
