"""Ordinary requests while maximal ones run or are abandoned, and the memory of the worst allowed request.

    .venv/bin/python -m bench.reliability [--probes 60] [--heavy 4] [--bundle DIR]

One `pcclip serve` (default limits; the default model's bundle from the bundle cache, as
`pcclip serve` serves it, unless `--bundle` names one) and a Redis on 127.0.0.1. `/v1/embeddings` with one short,
never-repeated text is the probe, sent one at a time:
1. idle: `--probes` probes on an idle server;
2. running: `--heavy` maximal class sets at once (PUT of classes x templates = the default
   PCCLIP_MAX_TEXTS_PER_REQUEST texts each, the clients wait), probes meanwhile;
3. abandoned: `--heavy` such requests whose clients give up after 2 s, probes right after.
Target: probe p99 within 3x idle in both. Then memory: the worst image request the default
limits allow (PCCLIP_MAX_REQUEST_PIXELS of JPEG at the per-image pixel limit), the server's peak
RSS while it runs (sampled every 20 ms) and its RSS 3 s after; targets: peak < 2 GB, after within
20 % of before. Figures are ratios within one run; the machine's load is printed with them.
"""

from __future__ import annotations

import io
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.harness import RedisServer, ServeProcess, bench_parser, ensure_bundle
from bench.serving import RESULTS_DIR, machine_note, print_targets

MAX_TEXTS = 4096  # service.settings default PCCLIP_MAX_TEXTS_PER_REQUEST
MAX_REQUEST_PIXELS = 400_000_000  # default PCCLIP_MAX_REQUEST_PIXELS
MAX_IMAGE_PIXELS = 40_000_000  # default PCCLIP_MAX_IMAGE_PIXELS


def heavy_store(i: int) -> dict:
    """A class set of exactly MAX_TEXTS distinct texts (512 classes x 8 templates)."""
    return {"classes": [f"heavy {i} species {c} of a long list" for c in range(512)],
            "templates": [f"a photo of a {{}}, variant {t}." for t in range(MAX_TEXTS // 512)]}


def probe(http, tag: str, n: int) -> np.ndarray:
    """`n` sequential one-text /v1/embeddings requests; their latencies (s). Non-200 raises."""
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        r = http.post("/v1/embeddings", json={"input": f"probe {tag} {i} {time.time_ns()}"})
        out.append(time.perf_counter() - t0)
        r.raise_for_status()
    return np.array(out)


def summary(lat: np.ndarray) -> dict:
    p50, p99 = np.percentile(lat, [50, 99])
    return {"n": len(lat), "p50_ms": round(1000 * float(p50), 1), "p99_ms": round(1000 * float(p99), 1)}


def plain_jpeg(side: int) -> bytes:
    """A plain side x side JPEG: a few hundred kB that decode to side^2 x 3 bytes."""
    from PIL import Image

    img = Image.new("RGB", (side, side), (120, 160, 200))
    img.paste((200, 40, 40), (side // 4, side // 4, side // 2, side // 2))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def worst_image_request() -> list[bytes]:
    """JPEGs at the per-image pixel limit, as many as the per-request pixel budget allows."""
    side = int(MAX_IMAGE_PIXELS**0.5)
    return [plain_jpeg(side)] * (MAX_REQUEST_PIXELS // (side * side))


def post_images_sampling_rss(server, images: list[bytes], interval_s: float = 0.02):
    """POST /v1/embed with `images` as multipart files; (response, the server's peak RSS in MB meanwhile)."""
    import httpx

    peak, done = [server.rss_bytes()], threading.Event()

    def sample():
        while not done.is_set():
            peak.append(server.rss_bytes())
            time.sleep(interval_s)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
        r = httpx.post(f"{server.base_url}/v1/embed", files=files, timeout=600)
    finally:
        done.set()
        sampler.join()
    return r, max(peak) / 2**20


def main(argv=None) -> int:
    import httpx

    parser = bench_parser(__doc__, requests=60, concurrency=1)
    parser.add_argument("--probes", type=int, default=60)
    parser.add_argument("--heavy", type=int, default=4)
    parser.add_argument("--heavy-timeout-s", type=float, default=900.0, help="the waiting heavy clients give up after this")
    parser.set_defaults(bundle=None)  # None: `pcclip serve`'s own default model
    args = parser.parse_args(argv)
    model = ensure_bundle(args.bundle) if args.bundle else None
    out: dict = {"machine_before": machine_note()}
    statuses: dict = {}
    with tempfile.TemporaryDirectory(prefix="pcclip-reliability-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            with ServeProcess(model, redis.url, Path(tmp) / "serve.log") as server, \
                    httpx.Client(base_url=server.base_url, timeout=120) as http:
                probe(http, "warm", 10)
                idle = probe(http, "idle", args.probes)
                out["idle"] = summary(idle)
                print(f"idle:      {out['idle']}", flush=True)

                def heavy(i: int, timeout_s: float):
                    try:
                        r = httpx.put(f"{server.base_url}/v1/stores/heavy-{i}", json=heavy_store(i), timeout=timeout_s)
                        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    except httpx.TimeoutException:
                        statuses["client gave up"] = statuses.get("client gave up", 0) + 1

                # running: the heavy clients wait; probes while at least one still runs
                threads = [threading.Thread(target=heavy, args=(i, args.heavy_timeout_s)) for i in range(args.heavy)]
                started = time.perf_counter()
                for t in threads:
                    t.start()
                time.sleep(1.0)
                running = probe(http, "running", args.probes)
                still_running = sum(t.is_alive() for t in threads)
                for t in threads:
                    t.join()
                out["running"] = dict(summary(running), heavy_still_running_after_probes=still_running,
                                      heavy_wall_s=round(time.perf_counter() - started, 1))
                print(f"running:   {out['running']}", flush=True)

                # abandoned: clients give up after 2 s; probes right after
                threads = [threading.Thread(target=heavy, args=(100 + i, 2.0)) for i in range(args.heavy)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                abandoned = probe(http, "abandoned", args.probes)
                out["abandoned"] = summary(abandoned)
                print(f"abandoned: {out['abandoned']}", flush=True)

                # memory: the worst image request the limits allow
                images = worst_image_request()
                before = server.rss_bytes() / 2**20
                t0 = time.perf_counter()
                r, peak = post_images_sampling_rss(server, images)
                worst_s = time.perf_counter() - t0
                statuses[f"worst image request {r.status_code}"] = 1
                time.sleep(3.0)
                after = server.rss_bytes() / 2**20
                out["memory"] = {"images": len(images), "pixels_each": MAX_IMAGE_PIXELS, "jpeg_bytes_each": len(images[0]),
                                 "status": r.status_code, "seconds": round(worst_s, 1), "rss_before_mb": round(before),
                                 "rss_peak_mb": round(peak), "rss_after_3s_mb": round(after)}
                print(f"memory:    {out['memory']}", flush=True)
        finally:
            redis.stop()
    out["heavy_statuses"] = statuses
    out["machine_after"] = machine_note()
    ratio_running = out["running"]["p99_ms"] / out["idle"]["p99_ms"]
    ratio_abandoned = out["abandoned"]["p99_ms"] / out["idle"]["p99_ms"]
    mem = out["memory"]
    out["targets"] = [
        {"target": f"probe p99 with {args.heavy} maximal requests running <= 3x idle", "figure": f"{ratio_running:.2f}x", "met": ratio_running <= 3},
        {"target": f"probe p99 after {args.heavy} maximal requests abandoned <= 3x idle", "figure": f"{ratio_abandoned:.2f}x", "met": ratio_abandoned <= 3},
        {"target": "worst allowed image request: peak RSS < 2 GB", "figure": f"{mem['rss_peak_mb']} MB", "met": mem["rss_peak_mb"] < 2048 and mem["status"] == 200},
        {"target": "RSS 3 s after it within 20 % of before", "figure": f"{mem['rss_after_3s_mb']} MB vs {mem['rss_before_mb']} MB",
         "met": mem["rss_after_3s_mb"] <= 1.2 * mem["rss_before_mb"]},
    ]
    print_targets(out["targets"])
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "reliability.json").write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
