"""`pcclip index COLLECTION SOURCE`: add a directory or a JSONL manifest of images to a collection.

SOURCE is a directory (image files found recursively; id = the path relative to it, metadata
`{"folder": <its folder>}`) or a `.jsonl` manifest, one `{"path", "id"?, "metadata"?}` per line
(paths relative to the manifest; id defaults to the path). Through the service (`--url`, batches
sent as multipart, `--concurrency` in flight) or `--in-process` (the model loaded here, written to
Redis directly). Items already in the collection are skipped (resume; `--no-resume` re-adds them).
A file that cannot be read or decoded is reported (and written to `--failures` as JSONL) and the
run goes on; the exit status is 1 when any file failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would bury the progress bar

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class Entry:
    """One image to add: the caller's id, the file, its metadata."""

    id: str
    path: Path
    metadata: dict | None = None


@dataclass
class Failure:
    id: str
    path: str
    error: str


# Requests in flight by default: as many as the service runs image-tower calls at once by default
# (`PCCLIP_IMAGE_WORKERS`), so the tower never waits for the next add (ingest 0.932x the service's
# image throughput at 3 in flight, 0.898x at 2; docs/collections.md).
DEFAULT_CONCURRENCY = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="add a directory or a JSONL manifest of images to a collection",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("collection", help="collection name (created if missing)")
    p.add_argument("source", help="a directory of images, or a .jsonl manifest of {path, id?, metadata?}")
    p.add_argument("--url", default=os.environ.get("PCCLIP_URL", "http://127.0.0.1:8000"), help="the service (default PCCLIP_URL or http://127.0.0.1:8000)")
    p.add_argument("--api-key", default=os.environ.get("PCCLIP_API_KEY"), help="API key for the service (default PCCLIP_API_KEY)")
    p.add_argument("--in-process", action="store_true", help="embed here and write to Redis (PCCLIP_REDIS_URL) without a service")
    p.add_argument("--model", default=None, help="with --in-process: model spec or bundle (default PCCLIP_MODEL)")
    p.add_argument("--batch-size", type=int, default=32, help="images per request (at most the service's PCCLIP_MAX_ITEMS)")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                   help=f"requests in flight (service; default {DEFAULT_CONCURRENCY}, the service's default image workers)")
    p.add_argument("--no-resume", action="store_true", help="add items the collection already has again")
    p.add_argument("--failures", default=None, help="write the failed files here (JSONL: id, path, error)")
    p.add_argument("--limit", type=int, default=None, help="only the first N entries")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.set_defaults(handler=cmd_index)


# -- the entries -------------------------------------------------------------------------------------
def read_entries(source: Path) -> tuple[list[Entry], list[Failure]]:
    """The entries of a directory or a JSONL manifest, and the manifest lines that are not valid."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        entries = []
        for p in files:
            rel = p.relative_to(source)
            folder = rel.parent.as_posix()
            entries.append(Entry(rel.as_posix(), p, {"folder": folder} if folder != "." else None))
        return entries, []
    entries, failures = [], []
    base = source.parent
    for number, line in enumerate(source.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            path = row["path"]
            if not isinstance(path, str) or not path:
                raise ValueError("'path' must be a non-empty string")
            metadata = row.get("metadata")
            if metadata is not None and not isinstance(metadata, dict):
                raise ValueError("'metadata' must be an object")
            entries.append(Entry(str(row.get("id") or path), base / path, metadata))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            failures.append(Failure(f"line {number}", str(source), f"bad manifest line: {err!r}"))
    return entries, failures


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="index", dynamic_ncols=True, file=sys.stderr, mininterval=0.5, disable=None)


# -- through the service -----------------------------------------------------------------------------
class ServiceIndexer:
    """Sends batches to POST /v1/collections/{name}/items; a bad file is set aside and the rest resent."""

    def __init__(self, url: str, collection: str, api_key: str | None, timeout: float):
        import httpx

        headers = {"X-API-Key": api_key} if api_key else {}
        self.client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.collection = collection
        self.base = f"/v1/collections/{collection}"

    def prepare(self) -> set[str]:
        """Create the collection if missing; the ids it already has."""
        r = self.client.put(self.base)
        if r.status_code not in (200, 201):
            raise SystemExit(f"pcclip index: cannot create collection {self.collection!r}: {r.status_code} {r.text}")
        have, offset = set(), 0
        while True:
            page = self.client.get(f"{self.base}/items", params={"offset": offset, "limit": 10_000})
            page.raise_for_status()
            ids = page.json()["ids"]
            have.update(ids)
            offset += len(ids)
            if len(ids) < 10_000:
                return have

    def add(self, batch: list[Entry]) -> tuple[int, list[Failure]]:
        """Add a batch; returns (added, failures). Retries 503s; other errors fail the named file."""
        failures, pending, blobs = [], [], {}
        for entry in batch:
            try:
                blobs[entry.id] = entry.path.read_bytes()
                pending.append(entry)
            except OSError as err:
                failures.append(Failure(entry.id, str(entry.path), f"cannot read: {err}"))
        attempts = 0
        while pending:
            files = [("images", (e.path.name, blobs[e.id], "application/octet-stream")) for e in pending]
            data = {"ids": [e.id for e in pending], "metadata": [json.dumps(e.metadata) if e.metadata else "" for e in pending]}
            r = self.client.post(f"{self.base}/items", files=files, data=data)
            if r.status_code == 200:
                return len(pending), failures
            error = _error_of(r)
            if r.status_code == 503 and attempts < 20:
                attempts += 1
                time.sleep(float(r.headers.get("Retry-After", 1)))
                continue
            index = error.get("index")
            if index is not None and 0 <= index < len(pending) and r.status_code in (413, 422):
                bad = pending.pop(index)
                failures.append(Failure(bad.id, str(bad.path), f"{r.status_code} {error.get('code')}: {error.get('message')}"))
                continue
            if len(pending) > 1 and r.status_code == 413:  # the body as a whole is too large: halves
                half = len(pending) // 2
                first, first_failures = self.add(pending[:half])
                second, second_failures = self.add(pending[half:])
                return first + second, failures + first_failures + second_failures
            failures += [Failure(e.id, str(e.path), f"{r.status_code} {error.get('code')}: {error.get('message')}") for e in pending]
            return 0, failures
        return 0, failures


def _error_of(response) -> dict:
    try:
        return response.json().get("error") or {}
    except ValueError:
        return {"code": "http_error", "message": response.text[:200]}


# -- in process --------------------------------------------------------------------------------------
class InProcessIndexer:
    """Embeds with a locally loaded model and writes to Redis through the service's CollectionRegistry."""

    def __init__(self, collection: str, model: str | None):
        import asyncio

        from models.images import ImageLimits
        from models.loading import load_encoder
        from service.settings import Settings

        self.settings = Settings(**({"model": model} if model else {}))
        self.encoder = load_encoder(self.settings.model, device=self.settings.device, batch_size=self.settings.max_batch_size)
        self.limits = ImageLimits(max_pixels=self.settings.max_image_pixels, max_bytes=self.settings.max_image_bytes)
        self.collection = collection
        self.loop = asyncio.new_event_loop()
        self.lock = threading.Lock()
        self.registry = self.coll = None

    def prepare(self) -> set[str]:
        from service.collections import CollectionRegistry
        from service.metrics import ServiceMetrics
        from service.stores import StoreRegistry

        enc, s = self.encoder, self.settings
        metrics = ServiceMetrics()
        stores = StoreRegistry(s.redis_url, enc.model_id, enc.fingerprint, metrics, timeout_s=max(s.redis_timeout_s, 5.0))
        self.loop.run_until_complete(stores.start())
        if not stores.up:
            raise SystemExit(f"pcclip index: Redis at {stores._safe_url()} is not reachable ({stores.last_error})")
        self.registry = CollectionRegistry(stores, enc.model_id, enc.fingerprint, metrics, dtype=s.collection_dtype,
                                           log_length=s.collection_log_length, index=s.collection_index)
        self.coll, _ = self.loop.run_until_complete(self.registry.create(self.collection, enc.dim))
        return set(self.coll.index.ids(0, len(self.coll.index)))

    def add(self, batch: list[Entry]) -> tuple[int, list[Failure]]:
        from models.images import ImageDecodeError, decode_image

        failures, ok, images = [], [], []
        for entry in batch:
            try:
                images.append(decode_image(entry.path.read_bytes(), self.limits))
                ok.append(entry)
            except (OSError, ImageDecodeError) as err:
                failures.append(Failure(entry.id, str(entry.path), f"{type(err).__name__}: {err}"))
        if not ok:
            return 0, failures
        vectors = self.encoder.encode_pixels(self.encoder.preprocess(images))
        with self.lock:  # one writer on the loop
            self.loop.run_until_complete(self.registry.add(self.coll, [e.id for e in ok], vectors, [e.metadata for e in ok]))
        return len(ok), failures


# -- the command -------------------------------------------------------------------------------------
def run_index(indexer, entries: list[Entry], batch_size: int, concurrency: int, resume: bool) -> tuple[int, int, list[Failure]]:
    """(added, skipped, failures) of adding `entries` with `indexer` in batches, `concurrency` in flight."""
    have = indexer.prepare()
    todo = [e for e in entries if not (resume and e.id in have)]
    skipped = len(entries) - len(todo)
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    added, failures = 0, []
    bar = _progress(len(todo))
    try:
        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            for n, batch_failures in pool.map(indexer.add, batches):
                added += n
                failures += batch_failures
                bar.update(n + len(batch_failures))
                if batch_failures:
                    bar.set_postfix(failed=len(failures))
    finally:
        bar.close()
    return added, skipped, failures


def cmd_index(args) -> int:
    source = Path(args.source)
    if not source.exists():
        raise SystemExit(f"pcclip index: {source} does not exist")
    entries, failures = read_entries(source)
    if args.limit is not None:
        entries = entries[: args.limit]
    batch_size = max(1, int(args.batch_size))
    indexer = InProcessIndexer(args.collection, args.model) if args.in_process else ServiceIndexer(args.url, args.collection, args.api_key, args.timeout)
    started = time.perf_counter()
    added, skipped, run_failures = run_index(indexer, entries, batch_size, 1 if args.in_process else args.concurrency, not args.no_resume)
    failures += run_failures
    took = time.perf_counter() - started
    for f in failures[:20]:
        print(f"failed: {f.id} ({f.path}): {f.error}", file=sys.stderr)
    if len(failures) > 20:
        print(f"... and {len(failures) - 20} more failures", file=sys.stderr)
    if args.failures:
        with open(args.failures, "w") as fh:
            for f in failures:
                fh.write(json.dumps(f.__dict__) + "\n")
    print(json.dumps({"collection": args.collection, "added": added, "skipped": skipped, "failed": len(failures),
                      "seconds": round(took, 2), "images_per_s": round(added / took, 2) if took > 0 else None}))
    return 1 if failures else 0
