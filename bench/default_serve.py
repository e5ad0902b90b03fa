"""The Quickstart's `pcclip serve` (no --model, no --backend): ready time, libtorch, memory.

    .venv/bin/python -m bench.default_serve [--requests 1000] [--starts 3] [--torch] [--env '{"PCCLIP_...": "..."}']

The default serves pcclip-mini's ONNX bundle from the bundle cache (`service/bundle_cache.py`).
The cache is filled first if empty (the build time is printed, and not counted in the starts).
Then: `--starts` fresh processes, each timed from process start to the first 200 from /readyz;
whether the serving process maps libtorch (`/proc/PID/maps`); its RSS after `--requests`
requests of the soak mix (bench/soak.py) at concurrency 16, read 3 s after the last one (the
service hands its towers' working memory back after 1 s idle), with the RSS right after the last
request and the peak during them (sampled every 50 ms) beside it. `--torch` also starts
`pcclip serve --backend torch` once, for the same figures beside them.
Targets: ready < 3 s (median), no libtorch mapped, RSS after 1,000 mixed requests < 400 MB.

`--old-commit C` (with `--old-tree DIR`, a worktree made if missing) also starts C's code serving
the same cached bundle, taking turns with this checkout's, and prints the ratio of the medians.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.harness import RedisServer, ServeProcess, b64, bench_parser, run_load, sample_photos
from bench.peer import ensure_checkout
from bench.serving import finish, machine_note
from bench.soak import BASE_CLASSES, BASE_STORE, mixed_requests


IDLE_S = 3.0  # RSS is read this long after the load, and also right after it and at its peak


def _has_libtorch(server: ServeProcess) -> bool:
    return any("libtorch" in Path(f).name for f in server.mapped_files())


def _serve_figures(server: ServeProcess, requests: int, concurrency: int, photos_b64: list[str]) -> dict:
    import httpx

    httpx.put(f"{server.base_url}/v1/stores/{BASE_STORE}", json={"classes": BASE_CLASSES}, timeout=120).raise_for_status()
    peak, done = [server.rss_bytes()], threading.Event()

    def sample_rss():  # the peak during the load, beside the figure after it
        while not done.wait(0.05):
            peak[0] = max(peak[0], server.rss_bytes())

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    try:
        report = run_load(server.base_url, mixed_requests(requests, photos_b64, seed=1), concurrency, deadline_s=900)
    finally:
        done.set()
        sampler.join()
    right_after = server.rss_bytes()
    time.sleep(IDLE_S)  # the service hands its towers' working memory back after 1 s idle (PCCLIP_IDLE_MEMORY_RELEASE_S)
    ready = httpx.get(f"{server.base_url}/readyz", timeout=10).json()
    return {
        "backend": ready.get("backend"),
        "libtorch_mapped": _has_libtorch(server),
        "rss_mb": server.rss_bytes() / 2**20,
        "rss_right_after_load_mb": right_after / 2**20,
        "peak_rss_during_load_mb": peak[0] / 2**20,
        "statuses": report.by_status,
        "req_per_s": report.throughput(),
    }


def main(argv=None) -> int:
    parser = bench_parser(__doc__, requests=1000, concurrency=16)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--env", default="{}", help="JSON object added to the environment of this checkout's servers (A/B of a setting)")
    parser.add_argument("--torch", action="store_true", help="also measure `pcclip serve --backend torch` once")
    parser.add_argument("--old-commit", default=None, help="also time the starts of this commit's code, in turns")
    parser.add_argument("--old-tree", default="/tmp/pcclip-bench-old-start", help="worktree of --old-commit (made if missing)")
    args = parser.parse_args(argv)
    from service.bundle_cache import cached_bundle_path, resolve_bundle

    env = json.loads(args.env)
    out: dict = {"machine_before": machine_note(), "env": env}
    bundle = cached_bundle_path("pcclip-mini")
    if not (bundle / "manifest.json").exists():
        t0 = time.perf_counter()
        resolve_bundle("pcclip-mini")
        out["first_build_s"] = time.perf_counter() - t0
        print(f"built the default bundle {bundle} in {out['first_build_s']:.1f} s (once)", flush=True)
    out["bundle"] = str(bundle)
    photos_b64 = [b64(p) for p in sample_photos(16)]
    with tempfile.TemporaryDirectory(prefix="pcclip-default-serve-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            starts, old_starts = [], []
            old_tree = ensure_checkout(args.old_commit, args.old_tree) if args.old_commit else None
            for i in range(args.starts):
                with ServeProcess(None, redis.url, Path(tmp) / f"cold-{i}.log", env=env) as server:
                    starts.append(server.cold_start_s)
                    libtorch = _has_libtorch(server)
                if old_tree is not None:  # its own `pcclip serve` default: the same cached bundle (same weights and export code)
                    old = ServeProcess(None, redis.url, Path(tmp) / f"old-{i}.log", env={"PYTHONPATH": str(old_tree)}, cwd=old_tree)
                    with old:
                        old_starts.append(old.cold_start_s)
            out.update(ready_s=starts, ready_median_s=statistics.median(starts), libtorch_idle=libtorch)
            print(f"ready after {', '.join(f'{s:.2f}' for s in starts)} s (median {out['ready_median_s']:.2f} s); libtorch mapped: {libtorch}", flush=True)
            if old_starts:
                out.update(old_commit=args.old_commit, old_ready_s=old_starts, old_ready_median_s=statistics.median(old_starts))
                print(f"{args.old_commit}: ready after {', '.join(f'{s:.2f}' for s in old_starts)} s (median {out['old_ready_median_s']:.2f} s); "
                      f"this / old {out['ready_median_s'] / out['old_ready_median_s']:.2f}", flush=True)
            with ServeProcess(None, redis.url, Path(tmp) / "serve.log", env=env) as server:
                out["onnx"] = _serve_figures(server, args.requests, args.concurrency, photos_b64)
            print(f"default serve after {args.requests} mixed requests: {json.dumps(out['onnx'])}", flush=True)
            if args.torch:
                with ServeProcess(None, redis.url, Path(tmp) / "torch.log", args=("--backend", "torch")) as server:
                    out["torch"] = {"ready_s": server.cold_start_s, **_serve_figures(server, args.requests, args.concurrency, photos_b64)}
                print(f"--backend torch: {json.dumps(out['torch'])}", flush=True)
        finally:
            redis.stop()
    out["machine_after"] = machine_note()
    onnx = out["onnx"]
    out["targets"] = [
        {"target": "default `pcclip serve` ready < 3 s (median)", "figure": round(out["ready_median_s"], 2), "met": out["ready_median_s"] < 3},
        {"target": "no libtorch in the serving process", "figure": f"libtorch mapped: {out['libtorch_idle'] or onnx['libtorch_mapped']}",
         "met": not (out["libtorch_idle"] or onnx["libtorch_mapped"])},
        {"target": f"RSS after {args.requests} mixed requests < 400 MB", "figure": round(onnx["rss_mb"]), "met": onnx["rss_mb"] < 400},
    ]
    finish(out, "default_serve")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
