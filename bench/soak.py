"""Soak: mixed requests at concurrency 32 against a real `pcclip serve`: zero 5xx, zero lost store writes.

    .venv/bin/python -m bench.soak [--requests 20000] [--concurrency 32]

The mix (fixed seed): image embeddings, text embeddings (a pool of texts, so the cache is hit and
missed), classify against a stored class set, rank, store writes (PUT of new stores), store reads
and health checks. Afterwards every store whose PUT got 200 is read back, through the API and
straight from Redis: a missing or changed one is a lost write. `tests/load/test_soak.py` runs
the same function with a smaller count in CI.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from bench.harness import (
    bench_parser,
    LoadReport,
    RedisServer,
    Request,
    ServeProcess,
    b64,
    ensure_bundle,
    run_load,
    sample_photos,
)

BASE_STORE = "soak-base"
BASE_CLASSES = ["crow", "gull", "sparrow", "warbler", "wren", "tern", "heron", "finch"]


def store_classes(i: int) -> list[str]:
    """The classes written to store soak-{i} (distinct per store, so a mix-up is visible)."""
    return [f"class {i}-{k}" for k in range(3)]


def mixed_requests(n: int, photos_b64: list[str], seed: int = 0, writes: bool = True) -> list[Request]:
    """`n` requests of the soak mix, in a fixed pseudo-random order."""
    rng = random.Random(seed)
    texts = [f"the first bird has a {c} crown and {k} spots" for c in ("red", "black", "yellow", "blue") for k in range(50)]
    p = len(photos_b64)
    out = []
    for i in range(n):
        r = rng.random()
        img = photos_b64[rng.randrange(p)]
        if r < 0.25:
            out.append(Request("POST", "/v1/embed", {"images": [img]}, "embed_images"))
        elif r < 0.45:
            out.append(Request("POST", "/v1/embed", {"texts": [rng.choice(texts)]}, "embed_texts"))
        elif r < 0.65:
            out.append(Request("POST", "/v1/classify", {"images": [img], "store": BASE_STORE}, "classify_store"))
        elif r < 0.73:
            out.append(Request("POST", "/v1/rank", {"attribute": rng.choice(texts), "images": [img, photos_b64[(i + 1) % p]]}, "rank"))
        elif r < 0.78 and writes:
            out.append(Request("PUT", f"/v1/stores/soak-{i}", {"classes": store_classes(i)}, "store_put"))
        elif r < 0.88:
            out.append(Request("GET", f"/v1/stores/{BASE_STORE}", None, "store_get"))
        elif r < 0.94:
            out.append(Request("POST", "/v1/embed", {"images": ["not base64!"]}, "bad_input"))
        else:
            out.append(Request("GET", "/readyz", None, "readyz"))
    return out


def lost_store_writes(base_url: str, requests: list[Request], report: LoadReport, redis: RedisServer) -> list[str]:
    """Stores whose PUT was answered 200 but that are missing or different now (API and Redis)."""
    import httpx

    statuses = statuses_by_request(requests, report)
    acknowledged = {r.path.rsplit("/", 1)[1] for r, status in zip(requests, statuses) if r.tag == "store_put" and status == 200}
    lost = []
    with httpx.Client(base_url=base_url, timeout=30) as http:
        for name in sorted(acknowledged):
            i = int(name.split("-", 1)[1])
            got = http.get(f"/v1/stores/{name}")
            if got.status_code != 200 or got.json()["classes"] != store_classes(i):
                lost.append(f"{name}: API {got.status_code}")
    client = redis.client()
    in_redis = set()
    for key in client.scan_iter("pcclip:stores:*:generations"):  # each model's index (service/coherence.py)
        in_redis |= {m.decode() for m in client.hkeys(key)}
    lost += [f"{name}: not in Redis" for name in sorted(acknowledged - in_redis)]
    return lost


def statuses_by_request(requests: list[Request], report: LoadReport) -> list[int]:
    """Each request's status, in the order of `requests` (0: not sent or transport error)."""
    statuses = [0] * len(requests)
    for res in report.results:
        statuses[res.index] = res.status
    return statuses


def soak(base_url: str, redis: RedisServer, n: int, concurrency: int = 32, deadline_s: float = 3600.0,
         photos_b64: list[str] | None = None, show_progress: bool = False) -> dict:
    """Run the mix; return counts, 5xx, lost writes and throughput."""
    import httpx

    photos_b64 = photos_b64 or [b64(p) for p in sample_photos(16)]
    httpx.put(f"{base_url}/v1/stores/{BASE_STORE}", json={"classes": BASE_CLASSES}, timeout=120).raise_for_status()
    requests = mixed_requests(n, photos_b64)
    report = run_load(base_url, requests, concurrency, deadline_s=deadline_s, show_progress=show_progress)
    server_errors = [r for r in report.results if r.status >= 500 or r.status == 0]
    lost = lost_store_writes(base_url, requests, report, redis)
    by_tag: dict[str, dict] = {}
    for r in report.results:
        by_tag.setdefault(r.tag, {}).setdefault(r.status, 0)
        by_tag[r.tag][r.status] += 1
    return {
        "requests": n, "completed": len(report.results), "concurrency": concurrency, "wall_s": report.wall_s,
        "requests_per_s": report.throughput(), "statuses": report.by_status, "by_route": by_tag,
        "server_errors": len(server_errors), "server_error_samples": [(r.tag, r.status, r.error, r.body[:200]) for r in server_errors[:5]],
        "store_puts_acknowledged": sum(1 for s, q in zip(statuses_by_request(requests, report), requests) if q.tag == "store_put" and s == 200),
        "lost_store_writes": lost, "timed_out": report.timed_out, **report.percentiles(),
    }


def main(argv=None) -> int:
    parser = bench_parser(__doc__, requests=20_000, concurrency=32)
    parser.add_argument("--deadline", type=float, default=3600.0)
    args = parser.parse_args(argv)
    bundle = ensure_bundle(args.bundle)
    with tempfile.TemporaryDirectory(prefix="pcclip-soak-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            with ServeProcess(bundle, redis.url, Path(tmp) / "serve.log") as server:
                t0 = time.perf_counter()
                out = soak(server.base_url, redis, args.requests, args.concurrency, args.deadline, show_progress=True)
                alive = server.alive()
        finally:
            redis.stop()
    print(f"soak: {out['completed']}/{out['requests']} requests at c={out['concurrency']} in {time.perf_counter() - t0:.0f} s "
          f"({out['requests_per_s']:.1f} req/s), p50 {out['p50']*1e3:.0f} ms p99 {out['p99']*1e3:.0f} ms")
    print(f"statuses {out['statuses']}")
    for tag, statuses in sorted(out["by_route"].items()):
        print(f"  {tag:>15}: {statuses}")
    print(f"5xx/transport errors: {out['server_errors']} {out['server_error_samples']}")
    print(f"store writes acknowledged {out['store_puts_acknowledged']}, lost {len(out['lost_store_writes'])} {out['lost_store_writes'][:5]}")
    print(f"server alive after the run: {alive}")
    ok = out["server_errors"] == 0 and not out["lost_store_writes"] and alive and not out["timed_out"]
    print(f"[{'MET' if ok else 'MISSED'}] soak: zero 5xx, zero lost store writes")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
