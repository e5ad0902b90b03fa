"""Serving benchmark: HTTP throughput and latency of a real `pcclip serve` against raw ONNX Runtime.

    .venv/bin/python -m bench.serving [--requests 160] [--concurrency 1 4 16 64]

One run, one machine state: first the raw in-process ONNX Runtime throughput of the bundle's
towers at each batch size the service can form, then the same bundle behind `pcclip serve`
(uvicorn on 127.0.0.1, a real redis-server) under /v1/embed (images; texts), /v1/classify against
a stored class set, and /v1/rank at each concurrency. Prints throughput, p50/p95/p99 and the
ratio service / raw, checks the targets, and writes JSON + a PNG to artifacts/bench/.

Targets (issue 8): image embedding at concurrency 16 >= 0.85 x raw batched ORT; p99 <= 3 x p50 at
concurrency 16; classify against a store encodes no class text; the text cache makes a repeated
text >= 20x cheaper than a new one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import (
    REPO_ROOT,
    RedisServer,
    Request,
    ServeProcess,
    b64,
    ensure_bundle,
    metric_value,
    run_load,
    sample_photos,
)

RESULTS_DIR = REPO_ROOT / "artifacts" / "bench"
RANK_IMAGES = 4
STORE_CLASSES = [f"bird species {i}" for i in range(50)]


def machine_note() -> dict:
    """Cores and the load other processes put on the machine at the moment of measuring."""
    import psutil

    return {
        "cpus": os.cpu_count(),
        "loadavg_1m_5m_15m": [round(x, 2) for x in os.getloadavg()],
        "cpu_busy_percent_1s": psutil.cpu_percent(interval=1.0),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }


# -- raw ONNX Runtime ----------------------------------------------------------------------------
def raw_tower_throughput(run, inputs: np.ndarray, batch: int, min_seconds: float = 2.0, min_runs: int = 5) -> float:
    """Items per second of `run` on batches of `batch` items (in-process, no HTTP, no decoding)."""
    x = np.concatenate([inputs] * (batch // len(inputs) + 1))[:batch]
    run(x)  # warm-up
    runs, started = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - started < min_seconds:
        run(x)
        runs += 1
    return batch * runs / (time.perf_counter() - started)


class RawOrt:
    """The bundle loaded in this process, as the service loads it: raw tower throughput on demand."""

    def __init__(self, bundle: Path, photos: list[bytes], max_batch: int):
        from models.onnx_backend import load_bundle_encoder

        self.enc = load_bundle_encoder(bundle, batch_size=max_batch)
        self.photos = photos
        self.pixels = self.enc.preprocess(photos)
        self.ids = self.enc.tokenize([f"a photo of a bird with feature number {i}" for i in range(max_batch)])

    def items_per_s(self, kind: str, batch: int) -> float:
        """kind: image (tower only), text (tower only), image_with_decode (JPEG decode + preprocess + tower)."""
        if kind == "image":
            return raw_tower_throughput(self.enc.encode_pixels, self.pixels, batch)
        if kind == "text":
            return raw_tower_throughput(self.enc.encode_tokens, self.ids, batch)
        batch_photos = (self.photos * (batch // len(self.photos) + 1))[:batch]
        return raw_tower_throughput(lambda _: self.enc.encode_images(batch_photos), self.pixels, batch, min_runs=3)


def text_cache_cost(bundle: Path, n: int = 200) -> dict:
    """Seconds per text through the service's `InferenceEngine.embed_texts`: new texts vs a cached one."""
    from models.onnx_backend import load_bundle_encoder
    from service.inference import InferenceEngine
    from service.metrics import ServiceMetrics
    from service.settings import Settings

    enc = load_bundle_encoder(bundle)

    async def measure():
        engine = InferenceEngine(enc, Settings(max_wait_ms=0.0), ServiceMetrics())
        engine.start()
        try:
            await engine.embed_texts(["warm-up text"])
            t0 = time.perf_counter()
            for i in range(n):
                await engine.embed_texts([f"the first bird has a longer beak than bird {i}"])
            new = (time.perf_counter() - t0) / n
            repeated_text = "the first bird has a longer beak than bird 0"
            t0 = time.perf_counter()
            for _ in range(n):
                await engine.embed_texts([repeated_text])
            repeated = (time.perf_counter() - t0) / n
        finally:
            await engine.stop()
        return new, repeated

    new, repeated = asyncio.run(measure())
    return {"new_s": new, "repeated_s": repeated, "ratio": new / repeated}


# -- HTTP workloads ------------------------------------------------------------------------------
def workloads(photos_b64: list[str], n: int, concurrency: int, round_id: int) -> dict[str, tuple[list[Request], int]]:
    """Per route: (requests, items per request for the raw comparison)."""
    p = len(photos_b64)
    return {
        "embed_images": ([Request("POST", "/v1/embed", {"images": [photos_b64[i % p]]}, "embed_images") for i in range(n)], 1),
        # every text new (a cache miss), so the text tower runs for each
        "embed_texts": ([Request("POST", "/v1/embed", {"texts": [f"the bird in photo {round_id}-{concurrency}-{i} has a red crown"]}, "embed_texts")
                         for i in range(n)], 1),
        "classify_store": ([Request("POST", "/v1/classify", {"images": [photos_b64[i % p]], "store": "bench-birds"}, "classify_store")
                            for i in range(n)], 1),
        "rank": ([Request("POST", "/v1/rank", {"attribute": "The first bird is larger than the second.",
                                               "images": [photos_b64[(i + k) % p] for k in range(RANK_IMAGES)]}, "rank")
                  for i in range(n)], RANK_IMAGES),
    }


def http_text_cache(base_url: str, n: int = 100) -> dict:
    """Sequential HTTP latency of /v1/embed with a new text vs the same text again (for information)."""
    import httpx

    with httpx.Client(base_url=base_url, timeout=30) as http:
        http.post("/v1/embed", json={"texts": ["warm-up"]})
        t0 = time.perf_counter()
        for i in range(n):
            assert http.post("/v1/embed", json={"texts": [f"http cache probe {i} about beaks"]}).status_code == 200
        new = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n):
            assert http.post("/v1/embed", json={"texts": ["http cache probe 0 about beaks"]}).status_code == 200
        repeated = (time.perf_counter() - t0) / n
    return {"new_s": new, "repeated_s": repeated, "ratio": new / repeated}


def run(args) -> dict:
    bundle = ensure_bundle(args.bundle)
    photos = sample_photos(16)
    photos_b64 = [b64(p) for p in photos]
    max_batch = 32  # the service's default max_batch_size
    results: dict = {"bundle": str(bundle), "machine_before": machine_note(), "requests_per_point": args.requests}

    # raw ORT is measured right before each HTTP point (same batch size), so both see the same machine load
    raw = RawOrt(bundle, photos, max_batch)
    results["text_cache_engine"] = text_cache_cost(bundle)

    with tempfile.TemporaryDirectory(prefix="pcclip-bench-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            with ServeProcess(bundle, redis.url, Path(tmp) / "serve.log") as server:
                import httpx

                results["cold_start_s"] = server.cold_start_s
                base = server.base_url
                put = httpx.put(f"{base}/v1/stores/bench-birds", json={"classes": STORE_CLASSES}, timeout=120)
                put.raise_for_status()
                results["text_cache_http"] = http_text_cache(base)
                points = []
                for round_id, c in enumerate(args.concurrency):
                    for route, (reqs, items) in workloads(photos_b64, args.requests, c, round_id).items():
                        tower = "text" if route == "embed_texts" else "image"
                        batch = min(c * items, max_batch)
                        raw_items = raw.items_per_s(tower, batch)
                        raw_decode = raw.items_per_s("image_with_decode", batch) if tower == "image" else None
                        before = httpx.get(f"{base}/metrics").text
                        report = run_load(base, reqs, c, deadline_s=args.deadline)
                        after = httpx.get(f"{base}/metrics").text
                        items_per_s = report.count(lambda r: r.status == 200) * items / report.wall_s
                        text_calls = (metric_value(after, "pcclip_inference_seconds_count", tower="text")
                                      - metric_value(before, "pcclip_inference_seconds_count", tower="text"))
                        mean_batch = _mean_batch(before, after, tower)
                        point = {
                            "route": route, "concurrency": c, "requests": len(report.results), "ok": report.count(lambda r: r.status == 200),
                            "statuses": report.by_status, "timed_out": report.timed_out, "requests_per_s": report.throughput(),
                            "items_per_s": items_per_s, **report.percentiles(), "raw_batch": batch,
                            "raw_items_per_s": raw_items, "ratio_service_raw": items_per_s / raw_items,
                            "raw_with_decode_items_per_s": raw_decode,
                            "ratio_service_raw_with_decode": items_per_s / raw_decode if raw_decode else None,
                            "text_tower_calls": text_calls, "mean_server_batch": mean_batch,
                        }
                        points.append(point)
                        print(_format_point(point), flush=True)
                results["points"] = points
                results["server_rss_mb"] = server.rss_bytes() / 2**20
        finally:
            redis.stop()
    results["machine_after"] = machine_note()
    results["targets"] = targets(results)
    return results


def _mean_batch(before: str, after: str, tower: str) -> float | None:
    n = metric_value(after, "pcclip_batch_size_count", tower=tower) - metric_value(before, "pcclip_batch_size_count", tower=tower)
    s = metric_value(after, "pcclip_batch_size_sum", tower=tower) - metric_value(before, "pcclip_batch_size_sum", tower=tower)
    return s / n if n else None


def _format_point(p: dict) -> str:
    return (f"{p['route']:>15} c={p['concurrency']:<3} {p['requests_per_s']:7.1f} req/s {p['items_per_s']:7.1f} items/s "
            f"p50 {p['p50']*1e3:7.1f} ms p95 {p['p95']*1e3:7.1f} ms p99 {p['p99']*1e3:7.1f} ms | raw@{p['raw_batch']:<2} "
            f"{p['raw_items_per_s']:7.1f}/s ratio {p['ratio_service_raw']:.2f}"
            + (f" (vs decode+ORT {p['ratio_service_raw_with_decode']:.2f})" if p["ratio_service_raw_with_decode"] else "")
            + f" | batch {p['mean_server_batch'] or 0:.1f} "
            f"text calls {p['text_tower_calls']:.0f} | {p['statuses']}")


def targets(results: dict) -> list[dict]:
    """Each target of the issue: the figure, the bound, met or missed."""
    by = {(p["route"], p["concurrency"]): p for p in results["points"]}
    out = []
    img16 = by.get(("embed_images", 16))
    if img16:
        out.append({"target": "image embed throughput at c=16 / raw batched ORT >= 0.85", "figure": round(img16["ratio_service_raw"], 3),
                    "met": img16["ratio_service_raw"] >= 0.85})
        ratio = img16["p99"] / img16["p50"]
        out.append({"target": "image embed p99 / p50 at c=16 <= 3", "figure": round(ratio, 2), "met": ratio <= 3.0})
    calls = sum(p["text_tower_calls"] for p in results["points"] if p["route"] == "classify_store")
    out.append({"target": "classify against a store: text-tower calls == 0", "figure": calls, "met": calls == 0})
    cache = results["text_cache_engine"]["ratio"]
    out.append({"target": "text cache: new / repeated text cost >= 20", "figure": round(cache, 1), "met": cache >= 20})
    cold = results.get("cold_start_s")
    if cold is not None:
        out.append({"target": "cold start to /readyz < 5 s", "figure": round(cold, 2), "met": cold < 5.0})
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    routes = sorted({p["route"] for p in results["points"]})
    for route in routes:
        pts = [p for p in results["points"] if p["route"] == route]
        cs = [p["concurrency"] for p in pts]
        ax1.plot(cs, [p["ratio_service_raw"] for p in pts], marker="o", label=route)
        ax2.plot(cs, [p["p99"] * 1e3 for p in pts], marker="o", label=route)
    ax1.axhline(0.85, color="grey", ls="--", lw=1)
    for ax, title in ((ax1, "items/s: service / raw ORT"), (ax2, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_title(title)
        ax.legend(fontsize=8)
    ax2.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_targets(target_list: list[dict]) -> None:
    print("\ntargets:")
    for t in target_list:
        print(f"  [{'MET' if t['met'] else 'MISSED'}] {t['target']}: {t['figure']}")


def finish(out: dict, name: str) -> Path:
    """Print the machine load and the targets of a benchmark's results; write them to artifacts/bench/NAME.json."""
    print(f"machine before {out['machine_before']}\nmachine after {out['machine_after']}")
    print_targets(out["targets"])
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(REPO_ROOT / "artifacts" / "pcclip-mini-onnx"))
    parser.add_argument("--requests", type=int, default=160, help="requests per route and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--deadline", type=float, default=180.0, help="seconds per route and concurrency at most")
    args = parser.parse_args(argv)
    results = run(args)
    c = results["text_cache_engine"]
    h = results["text_cache_http"]
    print(f"\ntext cache (InferenceEngine): new {c['new_s']*1e3:.2f} ms, repeated {c['repeated_s']*1e3:.3f} ms, ratio {c['ratio']:.0f}x")
    print(f"text cache (HTTP, sequential): new {h['new_s']*1e3:.2f} ms, repeated {h['repeated_s']*1e3:.2f} ms, ratio {h['ratio']:.1f}x")
    print(f"cold start {results['cold_start_s']:.2f} s; server RSS {results['server_rss_mb']:.0f} MB")
    print(f"machine before: {results['machine_before']}\nmachine after: {results['machine_after']}")
    print_targets(results["targets"])
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "serving.json").write_text(json.dumps(results, indent=1, default=str))
    plot(results, RESULTS_DIR / "serving.png")
    print(f"\nwrote {RESULTS_DIR / 'serving.json'} and serving.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
