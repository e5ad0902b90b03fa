"""Two pcclip servers that differ only in their environment, measured in turns on the same loads.

    .venv/bin/python -m bench.ab_env --a '{}' --b '{"PCCLIP_ORT_SPINNING": "1"}' [--rounds 4] [--texts 16x1 16x32] [--images 16]

Each round measures A then B (B then A in odd rounds) on every load: `CxK` texts loads are
`/v1/embeddings` with K COCO captions a request at concurrency C (text cache off in both), and
`--images C` is `/v1/embed` with one CUB photo a request at concurrency C. Prints each load's
items/s per round and the B/A ratio per round; writes artifacts/bench/ab_env.json. Both servers
listen on 127.0.0.1 only; every load is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench.harness import Request, RedisServer, ServeProcess, b64, run_load, sample_photos
from bench.peer import coco_captions, measure_texts
from bench.serving import finish, machine_note


def measure_images(server: ServeProcess, photos_b64: list[str], concurrency: int, n: int, deadline_s: float) -> float:
    """images/s (200s only) of `/v1/embed` with one photo a request."""
    reqs = [Request("POST", "/v1/embed", {"images": [photos_b64[i % len(photos_b64)]]}, "image") for i in range(n)]
    report = run_load(server.base_url, reqs, concurrency, deadline_s=deadline_s)
    return report.count(lambda r: r.status == 200) / report.wall_s


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=None, help="pcclip bundle (default: the default model's cached bundle)")
    parser.add_argument("--a", default="{}", help="JSON object: environment of server A")
    parser.add_argument("--b", required=True, help="JSON object: environment of server B")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--texts", nargs="*", default=["16x1", "16x32"], help="text loads, CxK")
    parser.add_argument("--images", type=int, nargs="*", default=[], help="image loads: concurrency of each")
    parser.add_argument("--image-requests", type=int, default=96)
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds per measurement at most")
    args = parser.parse_args(argv)
    from service.bundle_cache import resolve_bundle

    bundle = Path(args.bundle or resolve_bundle("pcclip-mini"))
    envs = {"A": json.loads(args.a), "B": json.loads(args.b)}
    out: dict = {"machine_before": machine_note(), "bundle": str(bundle), "env": envs, "loads": {}}
    texts = coco_captions(8192)
    photos_b64 = [b64(p) for p in sample_photos(16)] if args.images else []
    with tempfile.TemporaryDirectory(prefix="pcclip-ab-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        servers = {}
        try:
            for name, env in envs.items():
                servers[name] = ServeProcess(bundle, redis.url, Path(tmp) / f"{name}.log", env={"PCCLIP_TEXT_CACHE_SIZE": "0", **env}).start()
                measure_texts(servers[name], texts[-512:], 16, 32, pcclip=True, deadline_s=args.deadline, n=16)  # warm-up
            for r in range(args.rounds):
                offset = (r * 997) % len(texts)
                same = texts[offset:] + texts[:offset]
                for name in (("A", "B") if r % 2 == 0 else ("B", "A")):
                    for load in args.texts:
                        c, k = (int(x) for x in load.split("x"))
                        m = measure_texts(servers[name], same, c, k, pcclip=True, deadline_s=args.deadline)
                        out["loads"].setdefault(f"texts c{c}x{k}", {"A": [], "B": []})[name].append(m["texts_per_s"])
                    for c in args.images:
                        ips = measure_images(servers[name], photos_b64, c, args.image_requests, args.deadline)
                        out["loads"].setdefault(f"images c{c}", {"A": [], "B": []})[name].append(ips)
                print(f"round {r + 1}: " + "; ".join(f"{k} A {v['A'][-1]:.1f} B {v['B'][-1]:.1f}" for k, v in out["loads"].items()), flush=True)
        finally:
            for s in servers.values():
                s.stop()
            redis.stop()
    out["machine_after"] = machine_note()
    out["ratios"] = {}
    for key, v in out["loads"].items():
        ratios = [b / a for a, b in zip(v["A"], v["B"]) if a > 0]
        out["ratios"][key] = {"b_over_a_median": statistics.median(ratios), "per_round": ratios,
                              "a_median": statistics.median(v["A"]), "b_median": statistics.median(v["B"])}
        print(f"{key}: A {statistics.median(v['A']):.1f}/s, B {statistics.median(v['B']):.1f}/s, "
              f"B/A {statistics.median(ratios):.2f} (rounds {', '.join(f'{x:.2f}' for x in ratios)})")
    out["targets"] = []
    finish(out, "ab_env")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
