"""Collections at scale: exact in-process search over 10k / 100k / 1M synthetic normalised vectors.

For each size and matrix dtype: the vectors are written to a fresh Redis (AOF) in the service's
storage format, `pcclip serve` is started on it (the time to ready includes loading the collection
from Redis; the load itself is reported by /readyz), then rank (`{"attribute"}`) and search
(`{"item_id", "modifiers"}`) requests run at a fixed concurrency; p50/p99 latency and the server's
resident memory (minus that of the same server with no collection) are reported, and plotted.
Beside them, the in-process cost of one scoring pass (`ExactIndex.search`, 1 and 4 queries), which
is what the HTTP figures add to the service's per-request overhead.

    nice -n 10 .venv/bin/python -m bench.collection_scale --sizes 10000 100000 1000000 --dtypes float32 float16

Writes docs/results/collections/scale.json and scale.png. Talks to 127.0.0.1 only, bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.harness import REPO_ROOT, RedisServer, Request, ServeProcess, run_load, started

OUT_DIR = REPO_ROOT / "docs" / "results" / "collections"
ATTRIBUTES = ["a larger bird", "a smaller bird", "a bluer bird", "a whiter bird", "a bird with a redder crown",
              "a bird with blacker wings", "a bird with a yellower breast", "a bird with a longer bill"]
WRITE_BATCH = 1000  # items per Lua script: a long script blocks Redis (BUSY) for everyone
BULK_ROWS = 10_000  # items per HSET of the in-process mode's bulk fill


async def fill(redis_url: str, model: str, fingerprint: str, dim: int, n: int, seed: int = 0, bulk: bool = False) -> float:
    """Write n random unit vectors (ids v0..v{n-1}) as collection 'synthetic'; returns seconds.

    Through the service's writes (`CollectionRegistry.add`: one Lua script per WRITE_BATCH items,
    with the change log), or `bulk`: straight into the collection's vector hash (the storage format
    the registry loads), BULK_ROWS per HSET, the bench's shortcut to a large collection in bounded time.
    """
    from service.collections import CollectionRegistry
    from service.metrics import ServiceMetrics
    from service.stores import StoreRegistry

    metrics = ServiceMetrics()
    stores = StoreRegistry(redis_url, model, fingerprint, metrics, timeout_s=60.0)
    await stores.start()
    registry = CollectionRegistry(stores, model, fingerprint, metrics, log_length=100)
    coll, _ = await registry.create("synthetic", dim)
    vec_key = registry._keys(coll.name)[1]
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    step = BULK_ROWS if bulk else WRITE_BATCH
    for start in range(0, n, step):
        count = min(step, n - start)
        v = rng.standard_normal((count, dim), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        ids = [f"v{i}" for i in range(start, start + count)]
        if bulk:
            await stores._client.hset(vec_key, mapping=dict(zip(ids, (row.tobytes() for row in v.astype("<f4")))))
        else:
            await registry.add(coll, ids, v, [None] * count, refresh=False)
    took = time.perf_counter() - started
    await stores.stop()
    return took


def pass_times(n: int, dim: int, dtype: str, seed: int = 0) -> dict:
    """In-process ExactIndex.search of 1 and of 4 queries over n vectors (no HTTP): median ms of 5."""
    from service.vector_index import ExactIndex, Query

    rng = np.random.default_rng(seed)
    index = ExactIndex(dim, dtype, capacity=n)
    for start in range(0, n, 50_000):
        count = min(50_000, n - start)
        v = rng.standard_normal((count, dim), dtype=np.float32)
        index.upsert([f"v{i}" for i in range(start, start + count)], v, [None] * count)
    out = {}
    for batch in (1, 4):
        queries = [Query(q / np.linalg.norm(q), 10) for q in rng.standard_normal((batch, dim), dtype=np.float32)]
        times = []
        for _ in range(5):
            started = time.perf_counter()
            index.search(queries)
            times.append((time.perf_counter() - started) * 1000)
        out[f"pass_{batch}q_ms"] = round(float(np.median(times)), 1)
    return out


def requests_for(n: int, count: int, seed: int = 1) -> list[Request]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        attr = ATTRIBUTES[i % len(ATTRIBUTES)]
        if i % 2 == 0:
            out.append(Request("POST", "/v1/collections/synthetic/rank", {"attribute": attr, "top_k": 10}, tag="rank"))
        else:
            body = {"item_id": f"v{int(rng.integers(n))}", "modifiers": [{"text": attr, "weight": 1.0}], "top_k": 10}
            out.append(Request("POST", "/v1/collections/synthetic/search", body, tag="search"))
    return out


def measure(model: str, n: int, dtype: str, info: dict, workdir: Path, requests: int, concurrency: int, base_rss: int) -> dict:
    passes = pass_times(n, info["dim"], dtype)
    redis = RedisServer(workdir / f"redis-{n}-{dtype}").start()
    try:
        fill_s = asyncio.run(fill(redis.url, info["model"], info["fingerprint"], info["dim"], n))
        redis_mem = int(redis.client().info("memory")["used_memory"])
        with started(ServeProcess(model, redis.url, workdir / f"serve-{n}-{dtype}.log", env={"PCCLIP_COLLECTION_DTYPE": dtype})) as server:
            ready = httpx.get(f"{server.base_url}/readyz", timeout=30).json()
            assert ready["collections"]["items"] == n, ready["collections"]
            # warm the text cache (the attribute texts), then the timed run
            run_load(server.base_url, requests_for(n, 2 * len(ATTRIBUTES)), concurrency=1, deadline_s=600)
            report = run_load(server.base_url, requests_for(n, requests), concurrency=concurrency, deadline_s=900, timeout_s=120)
            rss = server.rss_bytes()
        statuses = sorted({r.status for r in report.results})
        by_tag = {}
        for tag in ("rank", "search"):
            lat = np.array([r.latency_s for r in report.results if r.tag == tag and r.status == 200]) * 1000
            by_tag[tag] = {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)), "n": int(len(lat))}
        return {
            "n": n, "dtype": dtype, "fill_s": round(fill_s, 1), "redis_used_memory_mb": round(redis_mem / 2**20, 1),
            "cold_start_s": round(server.cold_start_s, 2), "load_from_redis_s": round(ready["collections"]["loaded_in_s"], 2),
            "rss_mb": round(rss / 2**20, 1), "rss_over_empty_mb": round((rss - base_rss) / 2**20, 1),
            "matrix_mb": round(n * info["dim"] * (2 if dtype == "float16" else 4) / 2**20, 1),
            "concurrency": concurrency, "statuses": statuses, **passes, **{f"{t}_{k}": v for t, d in by_tag.items() for k, v in d.items()},
        }
    finally:
        redis.stop()
        shutil.rmtree(workdir / f"redis-{n}-{dtype}", ignore_errors=True)


async def _in_process(redis_url: str, info: dict, n: int, dtype: str, requests: int, concurrency: int, index: str = "flat", seed: int = 2) -> dict:
    """The service's collection path without HTTP or a model: load from Redis, then concurrent rank/search
    requests (each: the freshness check against Redis, then the batched search pass), and beside them the
    cost of one pass (`ExactIndex.search`) and of the bare matrix product under it (the memory-bound floor)."""
    import psutil

    from models.difference import composed_query
    from service.collections import CollectionRegistry
    from service.metrics import ServiceMetrics
    from service.schemas import DEFAULT_MODIFIER_WEIGHT
    from service.stores import StoreRegistry
    from service.vector_index import Query

    rss_before = psutil.Process().memory_info().rss
    metrics = ServiceMetrics()
    stores = StoreRegistry(redis_url, info["model"], info["fingerprint"], metrics, timeout_s=60.0)
    await stores.start()
    registry = CollectionRegistry(stores, info["model"], info["fingerprint"], metrics, dtype=dtype, index=index)
    load_s = await registry.start()
    rss = psutil.Process().memory_info().rss - rss_before
    coll = registry.cache.cached("synthetic")
    rng = np.random.default_rng(seed)
    texts = rng.standard_normal((len(ATTRIBUTES), info["dim"]), dtype=np.float32)
    latencies: dict[str, list[float]] = {"rank": [], "search": []}

    async def one(i: int) -> None:
        started = time.perf_counter()
        fresh = await registry.get("synthetic")  # the per-request freshness check (one Redis round trip)
        text = texts[i % len(texts)]
        if i % 2 == 0:
            q, tag, excluded = text / np.linalg.norm(text), "rank", ()
        else:
            item = f"v{int(rng.integers(n))}"
            q, tag = composed_query(fresh.index.get(item)[0], text[None, :], [DEFAULT_MODIFIER_WEIGHT]), "search"
            excluded = (fresh.index.row_of(item),)
        await registry.search(fresh, fresh.index.snapshot(), [Query(q, 10 + (8 if tag == "search" else 0), None, excluded)])
        latencies[tag].append((time.perf_counter() - started) * 1000)

    queue = list(range(requests))

    async def worker():
        while queue:
            await one(queue.pop())

    load_before = os.getloadavg()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    load_after = os.getloadavg()
    rss_after = psutil.Process().memory_info().rss - rss_before
    await stores.stop()
    out = {"load_from_redis_s": round(load_s, 2), "process_memory_mb": round(rss / 2**20, 1),
           "process_memory_after_requests_mb": round(rss_after / 2**20, 1), "index_nbytes_mb": round(coll.index.nbytes / 2**20, 1), "items": len(coll.index),
           "requests": requests, "requests_per_s": round(requests / wall, 1),
           "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after]}
    for tag, lat in latencies.items():
        out[f"{tag}_p50_ms"] = round(float(np.percentile(lat, 50)), 1)
        out[f"{tag}_p99_ms"] = round(float(np.percentile(lat, 99)), 1)
    out.update(_pass_floor(coll.index, info["dim"], rng))
    out.update(_recall(coll.index, n, info["dim"], rng))
    return out


def _recall(index, n: int, dim: int, rng, queries: int = 50, k: int = 10) -> dict:
    """recall@k of the index's search against the exact float32 scan of the same vectors (made again from
    `fill`'s seed), over random queries and composed-search-like queries (an item's vector plus noise: many
    near neighbours); the share of queries whose top-k ids are identical to the scan's."""
    from service.vector_index import Query

    exact = np.empty((n, dim), np.float32)
    fill_rng = np.random.default_rng(0)
    for start in range(0, n, BULK_ROWS):
        count = min(BULK_ROWS, n - start)
        v = fill_rng.standard_normal((count, dim), dtype=np.float32)
        exact[start : start + count] = v / np.linalg.norm(v, axis=1, keepdims=True)
    view = index.snapshot()
    random_q = rng.standard_normal((queries // 2, dim), dtype=np.float32)
    near_q = exact[rng.integers(n, size=queries - queries // 2)] + 0.05 * rng.standard_normal((queries - queries // 2, dim), dtype=np.float32)
    q = np.concatenate([random_q, near_q])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    found = index.search([Query(v, k) for v in q], view)
    hits, identical = 0, 0
    for v, got in zip(q, found):
        truth = set(np.argsort(-(exact @ v))[:k].tolist())
        ids = {int(h.id[1:]) for h in got}  # ids are v{row of the fill}
        hits += len(truth & ids)
        identical += truth == ids
    return {"recall_at_10": round(hits / (k * len(q)), 4), "identical_top10_share": round(identical / len(q), 4), "recall_queries": len(q)}


def _pass_floor(index, dim: int, rng, repeats: int = 7) -> dict:
    """Median ms of one search pass (`ExactIndex.search`, 1 and 4 queries) and of the bare matrix product
    under a float32 pass (`matrix @ q`: reads the whole matrix once; no search can do less)."""
    from service.vector_index import Query

    view = index.snapshot()
    out = {}
    for batch in (1, 4):
        q = rng.standard_normal((batch, dim), dtype=np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        queries = [Query(v, 10) for v in q]
        times, bare = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            index.search(queries, view)
            times.append((time.perf_counter() - started) * 1000)
            if view.vectors.dtype == np.float32:
                started = time.perf_counter()
                view.vectors[: view.size] @ q.T
                bare.append((time.perf_counter() - started) * 1000)
        out[f"pass_{batch}q_ms"] = round(float(np.median(times)), 1)
        if bare:
            out[f"matrix_product_{batch}q_ms"] = round(float(np.median(bare)), 1)
    return out


def measure_in_process(n: int, dtype: str, info: dict, workdir: Path, requests: int, concurrency: int, index: str = "flat") -> dict:
    redis = RedisServer(workdir / f"redis-{n}-{dtype}").start()
    try:
        fill_s = asyncio.run(fill(redis.url, info["model"], info["fingerprint"], info["dim"], n, bulk=True))
        redis_mem = int(redis.client().info("memory")["used_memory"])
        point = asyncio.run(_in_process(redis.url, info, n, dtype, requests, concurrency, index))
        return {"n": n, "dtype": dtype, "index": index, "mode": "in-process", "bulk_fill_s": round(fill_s, 1), "redis_used_memory_mb": round(redis_mem / 2**20, 1),
                "matrix_mb": round(n * info["dim"] * (2 if dtype == "float16" else 4) / 2**20, 1), "concurrency": concurrency, **point}
    finally:
        redis.stop()
        shutil.rmtree(workdir / f"redis-{n}-{dtype}", ignore_errors=True)


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for series in sorted({(p["dtype"], p.get("index", "flat")) for p in points}):
        pts = sorted((p for p in points if (p["dtype"], p.get("index", "flat")) == series), key=lambda p: p["n"])
        dtype = " ".join(series)
        ns = [p["n"] for p in pts]
        a.plot(ns, [p["rank_p99_ms"] for p in pts], "o-", label=f"rank p99 {dtype}")
        a.plot(ns, [p["search_p99_ms"] for p in pts], "s--", label=f"search p99 {dtype}")
        if all("pass_1q_ms" in p for p in pts):
            a.plot(ns, [p["pass_1q_ms"] for p in pts], "^:", label=f"one pass, 1 query {dtype}")
        b.plot(ns, [p.get("rss_over_empty_mb", max(p.get("process_memory_mb", 0), p.get("process_memory_after_requests_mb", 0))) for p in pts],
               "o-", label=f"replica memory {dtype}")
    a.axhline(150, color="grey", lw=0.8, ls=":", label="150 ms target")
    b.axhline(2048, color="grey", lw=0.8, ls=":", label="2 GB target")
    memory = "process memory growth, after the requests where measured (MB)" if points[0].get("mode") == "in-process" else "server memory over an empty one (MB)"
    for ax, title in ((a, f"latency at concurrency {points[0]['concurrency']} (ms)"), (b, memory)):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("vectors in the collection")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pcclip-mini", help="model spec or bundle the server loads")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"], choices=["float32", "float16"])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", default=str(OUT_DIR))
    parser.add_argument("--in-process", action="store_true",
                        help="no HTTP server and no model: the registry's load and search in this process (random query vectors)")
    parser.add_argument("--dim", type=int, default=384, help="with --in-process: vector size")
    parser.add_argument("--add", action="store_true", help="with --in-process: add (or replace) these points in the existing JSON and plot")
    parser.add_argument("--indexes", nargs="+", default=["flat"], choices=["flat", "int8"], help="with --in-process: PCCLIP_COLLECTION_INDEX kinds")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.in_process:
        info = {"model": "synthetic", "fingerprint": "0", "dim": args.dim}
        path = out / "scale_in_process.json"
        result = json.loads(path.read_text()) if args.add and path.exists() else {"mode": "in-process", "dim": args.dim, "runs": [], "points": []}
        result["runs"].append({"command": f"nice -n {os.nice(0)} .venv/bin/python -m bench.collection_scale " + " ".join(sys.argv[1:] if argv is None else argv),
                               "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()})
        with tempfile.TemporaryDirectory(prefix="pcclip-scale-") as tmp:
            for n in args.sizes:
                for dtype in args.dtypes:
                    for kind in args.indexes:
                        point = measure_in_process(n, dtype, info, Path(tmp), args.requests, args.concurrency, kind)
                        print(json.dumps(point), flush=True)
                        key = (n, dtype, kind)
                        result["points"] = [p for p in result["points"] if (p["n"], p["dtype"], p.get("index", "flat")) != key] + [point]
                        path.write_text(json.dumps(result, indent=1))  # after each point: a stopped run keeps what it measured
                        plot(result["points"], out / "scale_in_process.png")
        print(f"wrote {path} and {out / 'scale_in_process.png'}")
        return 0
    with tempfile.TemporaryDirectory(prefix="pcclip-scale-") as tmp:
        workdir = Path(tmp)
        redis = RedisServer(workdir / "redis-empty").start()
        try:
            with started(ServeProcess(args.model, redis.url, workdir / "serve-empty.log")) as server:
                info = httpx.get(f"{server.base_url}/readyz", timeout=30).json()
                base_rss = server.rss_bytes()
        finally:
            redis.stop()
        points = []
        for n in args.sizes:
            for dtype in args.dtypes:
                point = measure(args.model, n, dtype, info, workdir, args.requests, args.concurrency, base_rss)
                print(json.dumps(point), flush=True)
                points.append(point)
    result = {"command": "nice -n 10 .venv/bin/python -m bench.collection_scale " + " ".join(sys.argv[1:] if argv is None else argv),
              "model": info["model"], "dim": info["dim"], "empty_server_rss_mb": round(base_rss / 2**20, 1), "points": points}
    (out / "scale.json").write_text(json.dumps(result, indent=1))
    plot(points, out / "scale.png")
    print(f"wrote {out / 'scale.json'} and {out / 'scale.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
