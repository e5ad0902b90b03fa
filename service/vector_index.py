"""Search backends of collections: the `VectorIndex` interface, `ExactIndex` (exact in-process search) and `Int8Index`.

`ExactIndex` keeps a collection's normalised vectors in one contiguous matrix (float32 or float16)
and scores a batch of queries with one pass over it: `scores = M @ Q.T` (one BLAS product for
float32), then the top k per query by a block-maximum threshold (`top_k_rows`). Exact (no approximation); the cost is linear in the collection (docs/collections.md has
the latency and memory at 10k, 100k and 1M vectors). A vector database (for example Qdrant, see
the docs) can take over behind the same interface when a collection outgrows one machine.

`Int8Index` gives the same results with a quarter of the bytes read per pass: an int8 copy of the
rows (`_Int8Codes`) is scored first (ONNX Runtime's integer matrix product), every approximate
score is within a bound of the exact one, and only the rows that can still reach the top k are
scored exactly from the stored matrix (the derivation is in `_Int8Codes`).

Concurrency: mutations (`upsert`, `remove`) happen on one thread (the event loop); `search` may
run on another. Rows below the published size never change (an upsert of an existing id marks the
old row dead and appends), the matrix is only replaced by a larger copy, and compaction builds new
arrays: a search works on the `_View` it started with and sees a consistent collection.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
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
    codes: "_Int8Codes | None" = None  # Int8Index: the int8 copy of rows < size


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
        self._view = self._rows_written(_View(matrix, alive, view.ids, view.metadata, need, view.codes), size)

    def _rows_written(self, view: _View, start: int) -> _View:
        """The view to publish after rows start..view.size were written (subclasses add derived data)."""
        return view

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
        self._view = self._rows_written(_View(matrix, alive, ids, metadata, len(rows)), 0)

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
        if not queries:
            return []
        vectors = np.stack([np.asarray(x.vector, np.float32) for x in queries])
        scores = self._masked(self.scores(vectors, view), queries, view)  # [B, n]
        return [self._hits(view, rows, s[rows]) for s, query in zip(scores, queries) for rows in [top_k_rows(s, query.k)]]

    @staticmethod
    def _masked(scores: np.ndarray, queries: Sequence[Query], view: _View) -> np.ndarray:
        """`scores` [B, n] with dead rows, rows not allowed and excluded rows of each query set to -inf (in place)."""
        n = view.size
        if n and not view.alive[:n].all():
            scores[:, ~view.alive[:n]] = -np.inf
        for s, query in zip(scores, queries):
            if query.allowed is not None:
                s[~query.allowed[:n]] = -np.inf
            s[[r for r in query.excluded_rows if 0 <= r < n]] = -np.inf
        return scores

    @staticmethod
    def _hits(view: _View, rows: np.ndarray, vals: np.ndarray) -> list[Hit]:
        """Hits of `rows` scored `vals`: highest score first, ties by insertion order, -inf (left out) dropped."""
        order = np.lexsort((rows, -vals))
        return [Hit(view.ids[rows[i]], float(vals[i]), view.metadata[rows[i]]) for i in order if np.isfinite(vals[i])]

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


# -- Int8Index: an int8 first pass, then exact scores for the rows that can reach the top k ---------
INT8_SEGMENT_ROWS = 65_536  # rows per int8 segment (one ONNX Runtime call each)
INT8_MIN_ROWS = 65_536  # below this many rows a search is the plain float pass (as fast, no bookkeeping)
INT8_SLACK = 1e-4  # added to the bound: float rounding of the two passes (a 384-term float32 dot: < 3e-5)


class _Int8Codes:
    """The int8 copy of a matrix's rows that `Int8Index` scores first, and what bounds its error.

    Row r (float32 `v`, as stored) is quantized per row: `s_r = max|v| / 127`, `c_r = rint(v / s_r)`
    (int8), `v^ = s_r c_r`, residual `e_r = v - v^`. A query q is quantized the same way (`q^`,
    residual `f = q - q^`). The first pass computes `v^ . q^` exactly (an int8 product in int32,
    times the two scales). Then

        v . q = v^ . q^ + v^ . f + e_r . q,   so   |v . q - v^ . q^| <= |v^| |f| + |e_r| |q| <= E(q)

    with `E(q) = max_r |v^_r| * |f| + max_r |e_r| * |q|` (Cauchy-Schwarz; the maxima over the rows).
    If a^ is the k-th largest approximate score, k rows score at least a^ - E exactly, so every row
    of the exact top k has an approximate score of at least a^ - 2E: those candidates, re-scored
    exactly, give the exact top k.

    Layout: codes transposed in segments of INT8_SEGMENT_ROWS columns (`[D, w]` int8, the last one
    as wide as the capacity needs), so a pass is one integer matrix product per segment with the
    queries as the small left operand; per row `scale`, `norm` (|v^|) and `residual` (|e|), float32.
    Rows below a published size never change; growing copies what it replaces (as the matrix does).
    """

    def __init__(self, dim: int, segments: list[np.ndarray], scale: np.ndarray, norm: np.ndarray, residual: np.ndarray):
        self.dim = dim
        self.segments = segments
        self.scale, self.norm, self.residual = scale, norm, residual

    @classmethod
    def empty(cls, dim: int) -> "_Int8Codes":
        return cls(dim, [], np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))

    @property
    def capacity(self) -> int:
        return len(self.scale)

    @property
    def nbytes(self) -> int:
        return int(sum(seg.nbytes for seg in self.segments) + self.scale.nbytes + self.norm.nbytes + self.residual.nbytes)

    def grown(self, capacity: int, size: int) -> "_Int8Codes":
        """A copy with room for `capacity` rows (the first `size` kept; segments already full are shared)."""
        if capacity <= self.capacity:
            return self
        per_row = []
        for old in (self.scale, self.norm, self.residual):
            new = np.zeros(capacity, np.float32)
            new[:size] = old[:size]
            per_row.append(new)
        segments = list(self.segments)
        for j in range(-(-capacity // INT8_SEGMENT_ROWS)):
            width = min(INT8_SEGMENT_ROWS, capacity - j * INT8_SEGMENT_ROWS)
            if j < len(segments) and segments[j].shape[1] >= width:
                continue
            segment = np.zeros((self.dim, width), np.int8)
            if j < len(segments):  # a partial last segment: widened, its written columns copied
                keep = max(0, min(size - j * INT8_SEGMENT_ROWS, segments[j].shape[1]))
                segment[:, :keep] = segments[j][:, :keep]
                segments[j] = segment
            else:
                segments.append(segment)
        return _Int8Codes(self.dim, segments, *per_row)

    def write(self, start: int, vectors: np.ndarray) -> None:
        """Quantize rows start..start+len(vectors) (float32, as stored) into this copy."""
        scale, codes = quantize_int8(vectors)
        dequantized = codes.astype(np.float32) * scale[:, None]
        stop = start + len(vectors)
        self.scale[start:stop] = scale
        self.norm[start:stop] = np.linalg.norm(dequantized, axis=1)
        self.residual[start:stop] = np.linalg.norm(vectors - dequantized, axis=1)
        for j in range(start // INT8_SEGMENT_ROWS, -(-stop // INT8_SEGMENT_ROWS)):
            lo, hi = max(start, j * INT8_SEGMENT_ROWS), min(stop, (j + 1) * INT8_SEGMENT_ROWS)
            self.segments[j][:, lo - j * INT8_SEGMENT_ROWS : hi - j * INT8_SEGMENT_ROWS] = codes[lo - start : hi - start].T

    def segments_of(self, n: int) -> int:
        """How many segments hold rows < n."""
        return -(-n // INT8_SEGMENT_ROWS)

    def prepare(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(the queries as the first pass's uint8 operand [B, D], their scales [B], the bound E per query [B]) over rows < n."""
        q_scale, q_codes = quantize_int8(queries)
        q_residual = np.linalg.norm(queries - q_codes.astype(np.float32) * q_scale[:, None], axis=1)
        bound = float(self.norm[:n].max(initial=0.0)) * q_residual + float(self.residual[:n].max(initial=0.0)) * np.linalg.norm(queries, axis=1)
        return (q_codes.astype(np.int16) + 128).astype(np.uint8), q_scale, bound  # ONNX Runtime's fast path: uint8 x int8, zero point 128

    def segment_scores(self, j: int, operand: np.ndarray, q_scale: np.ndarray) -> np.ndarray:
        """`v^ . q^` of the queries (`prepare`d) with every row of segment j (its full width): float32 [B, width]."""
        segment = self.segments[j]
        lo = j * INT8_SEGMENT_ROWS
        out = _int8_session().run(None, {"a": operand, "b": segment, "a_scale": np.ones((), np.float32),
                                         "b_scale": self.scale[lo : lo + segment.shape[1]]})[0]
        out *= q_scale[:, None]
        return out

    def approximate_scores(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(`v^ . q^` for every query and row < n: float32 [B, n], the bound E per query: [B])."""
        operand, q_scale, bound = self.prepare(queries, n)
        parts = [self.segment_scores(j, operand, q_scale) for j in range(self.segments_of(n))]
        return np.ascontiguousarray(np.concatenate(parts, axis=1)[:, :n]), bound


def quantize_int8(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: (scale [N] float32, codes [N, D] int8) with `vectors ~ codes * scale`."""
    vectors = np.asarray(vectors, np.float32)
    scale = np.abs(vectors).max(axis=1, initial=0.0) / 127
    scale[scale == 0] = 1.0  # an all-zero row: codes 0
    codes = np.clip(np.rint(vectors / scale[:, None]), -127, 127).astype(np.int8)
    return scale.astype(np.float32), codes


_INT8_SESSION = None
_INT8_SESSION_LOCK = threading.Lock()


def _int8_session():
    """One ONNX Runtime session (thread-safe, shared by every Int8Index) of `(a - 128) @ b * a_scale * b_scale`:
    a uint8 [B, D] (the queries), b int8 [D, w] (a segment), b_scale float [w] (per row of the collection)."""
    global _INT8_SESSION
    with _INT8_SESSION_LOCK:
        if _INT8_SESSION is None:
            import onnxruntime as ort
            from onnx import TensorProto, helper, numpy_helper

            graph = helper.make_graph(
                [helper.make_node("MatMulIntegerToFloat", ["a", "b", "a_scale", "b_scale", "a_zero_point"], ["scores"], domain="com.microsoft")],
                "int8_scores",
                [helper.make_tensor_value_info("a", TensorProto.UINT8, ["queries", "dim"]),
                 helper.make_tensor_value_info("b", TensorProto.INT8, ["dim", "rows"]),
                 helper.make_tensor_value_info("a_scale", TensorProto.FLOAT, []),
                 helper.make_tensor_value_info("b_scale", TensorProto.FLOAT, ["rows"])],
                [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["queries", "rows"])],
                initializer=[numpy_helper.from_array(np.array(128, np.uint8), "a_zero_point")],
            )
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
            model.ir_version = 8
            options = ort.SessionOptions()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting beside the model's threads
            _INT8_SESSION = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return _INT8_SESSION


class Int8Index(ExactIndex):
    """`ExactIndex` with an int8 first pass: the same top k (exact scores from the stored matrix, float32 or
    float16), with about a quarter of the bytes read per pass on large collections (`_Int8Codes`).

    Below `min_rows` rows a search is `ExactIndex`'s float pass. Memory: the matrix plus D + 12 bytes a row.
    """

    def __init__(self, dim: int, dtype: str = "float32", capacity: int = 1024, min_rows: int | None = None):
        super().__init__(dim, dtype, capacity)
        self.min_rows = INT8_MIN_ROWS if min_rows is None else int(min_rows)
        _int8_session()  # built now (once per process): not in the first search's time

    @property
    def nbytes(self) -> int:
        codes = self._view.codes
        return super().nbytes + (codes.nbytes if codes is not None else 0)

    def _rows_written(self, view: _View, start: int) -> _View:
        codes = (view.codes or _Int8Codes.empty(self.dim)).grown(len(view.vectors), start)
        if view.size > start:
            codes.write(start, view.vectors[start : view.size].astype(np.float32))
        return replace(view, codes=codes)

    def search(self, queries: Sequence[Query], view: _View | None = None) -> list[list[Hit]]:
        """Top-k hits per query, as `ExactIndex.search` gives them (see `_Int8Codes` for why they are the same)."""
        view = view or self._view
        if not queries or not self.uses_codes(view):
            return super().search(queries, view)
        vectors = np.stack([np.asarray(x.vector, np.float32) for x in queries])
        approximate, bounds = view.codes.approximate_scores(vectors, view.size)
        approximate = self._masked(approximate, queries, view)
        return [self._exact_top(view, a, vector, bound, query) for a, vector, bound, query in zip(approximate, vectors, bounds, queries)]

    def uses_codes(self, view: _View) -> bool:
        """Whether a search of this view takes the int8 first pass (else: the float pass)."""
        return view.codes is not None and view.size >= self.min_rows

    @staticmethod
    def _exact_top(view: _View, approximate: np.ndarray, vector: np.ndarray, bound: float, query: Query) -> list[Hit]:
        """The exact top k from a query's masked approximate scores: the candidates (`_Int8Codes`), re-scored from the matrix."""
        top = top_k_rows(approximate, query.k)
        kth = approximate[top].min() if len(top) else -np.inf
        rows = np.flatnonzero(approximate >= kth - 2 * bound - INT8_SLACK) if np.isfinite(kth) else np.flatnonzero(np.isfinite(approximate))
        exact = view.vectors[rows].astype(np.float32) @ vector
        keep = top_k_rows(exact, query.k)
        return ExactIndex._hits(view, rows[keep], exact[keep])

    def ring_scan(self) -> "RingScan":
        """A scan that queries join between segments (see `RingScan`)."""
        return RingScan(self)


@dataclass
class _RingRequest:
    view: _View
    queries: Sequence[Query]
    token: object  # the caller's handle (a future), given back with the hits
    vectors: np.ndarray
    operand: np.ndarray
    q_scale: np.ndarray
    bound: np.ndarray
    scores: np.ndarray  # [B, size] approximate scores, filled segment by segment
    needed: set  # the segments still to score


class RingScan:
    """The first pass of an `Int8Index` as a ring: segment after segment, round and round, each step
    scoring the segment for every query in the ring. A query joins at the next step (whatever the
    segment) and leaves once it has seen every segment of its view, so it waits one pass, not the
    rest of the pass in flight and then its own. Results are those of `Int8Index.search`.

    `add` and `step` are called from one thread at a time (a collection's search loop).
    """

    def __init__(self, index: Int8Index):
        self.index = index
        self.active: list[_RingRequest] = []
        self.position = 0

    def accepts(self, view: _View) -> bool:
        return self.index.uses_codes(view)

    def add(self, view: _View, queries: Sequence[Query], token) -> None:
        """A request (queries made against `view`, `accepts(view)`) joins the ring."""
        vectors = np.stack([np.asarray(x.vector, np.float32) for x in queries])
        operand, q_scale, bound = view.codes.prepare(vectors, view.size)
        self.active.append(_RingRequest(view, queries, token, vectors, operand, q_scale, bound,
                                        np.empty((len(queries), view.size), np.float32), set(range(view.codes.segments_of(view.size)))))

    def step(self) -> list[tuple[object, list[list[Hit]]]]:
        """Score the segment at the ring's position for every request that still needs it; returns
        (token, hits per query) of the requests that have now seen all their segments."""
        if not self.active:
            return []
        turn = max(r.view.codes.segments_of(r.view.size) for r in self.active)
        j = self.position % turn
        self.position = j + 1
        groups: dict[int, list[_RingRequest]] = {}  # by int8 copy (the same rows < each view's size)
        for r in self.active:
            if j in r.needed:
                groups.setdefault(id(r.view.codes), []).append(r)
        for requests in groups.values():
            codes = requests[0].view.codes
            scores = codes.segment_scores(j, np.concatenate([r.operand for r in requests]), np.concatenate([r.q_scale for r in requests]))
            offset, lo = 0, j * INT8_SEGMENT_ROWS
            for r in requests:
                hi = min(r.view.size, lo + scores.shape[1])
                r.scores[:, lo:hi] = scores[offset : offset + len(r.queries), : hi - lo]
                offset += len(r.queries)
                r.needed.discard(j)
        done = [r for r in self.active if not r.needed]
        self.active = [r for r in self.active if r.needed]
        out = []
        for r in done:
            scores = ExactIndex._masked(r.scores, r.queries, r.view)
            out.append((r.token, [Int8Index._exact_top(r.view, a, v, b, q) for a, v, b, q in zip(scores, r.vectors, r.bound, r.queries)]))
        return out


INDEX_KINDS = {"flat": ExactIndex, "int8": Int8Index}


def make_index(kind: str, dim: int, dtype: str = "float32", capacity: int = 1024) -> ExactIndex:
    """A collection index of the given kind (`PCCLIP_COLLECTION_INDEX`): "flat" (`ExactIndex`) or "int8" (`Int8Index`)."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be one of {sorted(INDEX_KINDS)}, not {kind!r}")
    return INDEX_KINDS[kind](dim, dtype, capacity)


def index_kind(index: ExactIndex) -> str:
    """The `make_index` kind of an index."""
    return next(kind for kind, cls in INDEX_KINDS.items() if type(index) is cls)
