"""Cold start and resident memory of `pcclip serve` over a 10,000-request run.

    .venv/bin/python -m bench.memory [--requests 10000] [--starts 3]

Cold start: process start to the first 200 from /readyz, `--starts` fresh processes (median and
max). Memory: the server's RSS after each thousand requests of the soak mix (bench/soak.py, store
writes included) at concurrency 16. Targets: cold start < 5 s, RSS after the run < 600 MB, growth
between the 2nd and the 10th thousand <= 10 %.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from bench.harness import RedisServer, bench_parser, ServeProcess, b64, ensure_bundle, run_load, sample_photos
from bench.serving import finish, machine_note
from bench.soak import BASE_CLASSES, BASE_STORE, mixed_requests


def main(argv=None) -> int:
    parser = bench_parser(__doc__, requests=10_000, concurrency=16)
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args(argv)
    bundle = ensure_bundle(args.bundle)
    photos_b64 = [b64(p) for p in sample_photos(16)]
    out: dict = {"machine_before": machine_note()}
    with tempfile.TemporaryDirectory(prefix="pcclip-memory-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            starts = []
            for i in range(args.starts):
                with ServeProcess(bundle, redis.url, Path(tmp) / f"cold-{i}.log") as server:
                    starts.append(server.cold_start_s)
                    idle_rss = server.rss_bytes() / 2**20
            out.update(cold_start_s=starts, cold_start_median_s=statistics.median(starts), idle_rss_mb=idle_rss)
            print(f"cold start: {', '.join(f'{s:.2f}' for s in starts)} s (median {out['cold_start_median_s']:.2f} s); idle RSS {idle_rss:.0f} MB", flush=True)

            with ServeProcess(bundle, redis.url, Path(tmp) / "serve.log") as server:
                import httpx

                httpx.put(f"{server.base_url}/v1/stores/{BASE_STORE}", json={"classes": BASE_CLASSES}, timeout=120).raise_for_status()
                requests = mixed_requests(args.requests, photos_b64, seed=1)
                rss, statuses = [], {}
                for k in range(0, args.requests, 1000):
                    report = run_load(server.base_url, requests[k : k + 1000], args.concurrency, deadline_s=900)
                    for s, n in report.by_status.items():
                        statuses[s] = statuses.get(s, 0) + n
                    rss.append(server.rss_bytes() / 2**20)
                    print(f"  after {k + len(report.results):>6} requests: RSS {rss[-1]:.0f} MB ({report.throughput():.1f} req/s)", flush=True)
        finally:
            redis.stop()
    growth = (rss[-1] - rss[1]) / rss[1] if len(rss) >= 2 else float("nan")
    out.update(rss_mb_per_thousand=rss, statuses=statuses, growth_2nd_to_last=growth, machine_after=machine_note())
    out["targets"] = [
        {"target": "cold start to /readyz < 5 s (median)", "figure": round(out["cold_start_median_s"], 2), "met": out["cold_start_median_s"] < 5},
        {"target": f"RSS after {args.requests} requests < 600 MB", "figure": round(rss[-1]), "met": rss[-1] < 600},
        {"target": "RSS growth 2nd -> last thousand <= 10 %", "figure": f"{growth * 100:.1f} %", "met": growth <= 0.10},
    ]
    print(f"statuses {statuses}")
    finish(out, "memory")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
