"""Where the CPU goes while `pcclip serve` embeds images at concurrency 16, beside raw ONNX Runtime.

    .venv/bin/python -m bench.image_shares [--requests 160] [--rounds 2] [--env '{"PCCLIP_...": "..."}'] [--no-perf]

One `pcclip serve` (the default model's cached bundle; `--env` adds to its environment) on
127.0.0.1 with a real redis-server. Each round: `--requests` POST /v1/embed with one CUB photo as
base64 JSON at concurrency 16 (as `bench.peer`), then raw ONNX Runtime right after: the bundle's
image tower in this process on preprocessed pixels at the mean batch size the service formed (its
`pcclip_batch_size` metric), (a) with the service's session options and (b) with ONNX Runtime's
own defaults (CPU memory arena and thread spinning on). Prints images/s and service / raw.

During the first round's load it records:
- the CPU seconds of the server and of this process (the load client, on the same cores) against
  cores x wall time (psutil);
- with `perf` installed (and not `--no-perf`), the server's CPU samples by shared object, grouped
  into steps: `model` (onnxruntime), `decode_resize` (Pillow, libjpeg), `numpy` (normalising,
  concatenating, tolist), `python` (the interpreter and its extension modules: HTTP, JSON, base64,
  pydantic, asyncio), `kernel` (page faults, syscalls, scheduling), `libc` (memcpy, malloc, ...).
Writes artifacts/bench/image_shares.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.harness import RedisServer, Request, ServeProcess, b64, metric_value, run_load, sample_photos
from bench.serving import finish, machine_note, raw_tower_throughput

STEP_OF_DSO = (  # first match wins
    ("model", re.compile(r"onnxruntime")),
    ("decode_resize", re.compile(r"_imaging|libjpeg|libopenjp|libpng|libwebp|libtiff|Pillow")),
    ("numpy", re.compile(r"_multiarray|numpy|openblas")),
    ("kernel", re.compile(r"\[kernel")),
    ("libc", re.compile(r"^(libc|libm|libstdc\+\+|ld-linux|libgcc|libpthread)[.-]")),
    ("python", re.compile(r"python|cpython|\.abi3\.so")),
)


def step_of(dso: str) -> str:
    for step, pattern in STEP_OF_DSO:
        if pattern.search(dso):
            return step
    return "other"


def perf_shares(report_text: str) -> tuple[dict, dict]:
    """`perf report --sort dso --stdio` -> (percent by step, percent by shared object)."""
    by_dso: dict[str, float] = {}
    for line in report_text.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S.*?)\s*$", line)
        if m and not line.lstrip().startswith("#"):
            by_dso[m.group(2)] = by_dso.get(m.group(2), 0.0) + float(m.group(1))
    by_step: dict[str, float] = {}
    for dso, pct in by_dso.items():
        by_step[step_of(dso)] = by_step.get(step_of(dso), 0.0) + pct
    return by_step, dict(sorted(by_dso.items(), key=lambda kv: -kv[1])[:15])


def image_load(server: ServeProcess, photos_b64: list[str], n: int, concurrency: int) -> dict:
    """images/s (200s) and the mean tower batch the service formed during one load."""
    import httpx

    def batch_metrics():
        text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
        return (metric_value(text, "pcclip_batch_size_sum", tower="image"), metric_value(text, "pcclip_batch_size_count", tower="image"),
                metric_value(text, "pcclip_inference_seconds_sum", tower="image"), metric_value(text, "pcclip_preprocess_seconds_sum", kind="image"))

    before = batch_metrics()
    reqs = [Request("POST", "/v1/embed", {"images": [photos_b64[i % len(photos_b64)]]}, "image") for i in range(n)]
    report = run_load(server.base_url, reqs, concurrency, deadline_s=300)
    after = batch_metrics()
    return {"images_per_s": report.count(lambda r: r.status == 200) / report.wall_s, "wall_s": report.wall_s,
            "mean_batch": (after[0] - before[0]) / max(after[1] - before[1], 1), "statuses": report.by_status, **report.percentiles(),
            # seconds of tower calls (summed over the calls running at once) and of decoding, per second of the load
            "tower_call_s_per_s": (after[2] - before[2]) / report.wall_s, "decode_s_per_s": (after[3] - before[3]) / report.wall_s}


def cpu_seconds(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=None, help="pcclip bundle (default: the default model's cached bundle)")
    parser.add_argument("--env", default="{}", help="JSON object added to the server's environment")
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-perf", action="store_true", help="no perf profile of the server")
    args = parser.parse_args(argv)
    import onnxruntime as ort
    import psutil

    from models.onnx_backend import load_bundle_encoder
    from service.bundle_cache import resolve_bundle

    bundle = Path(args.bundle or resolve_bundle("pcclip-mini"))
    env = json.loads(args.env)
    out: dict = {"machine_before": machine_note(), "bundle": str(bundle), "env": env, "rounds": []}
    photos = sample_photos(16)
    photos_b64 = [b64(p) for p in photos]
    enc = load_bundle_encoder(bundle, batch_size=32)
    pixels = enc.preprocess(photos)
    default_session = ort.InferenceSession(str(bundle / enc.manifest["image"]["file"]), providers=["CPUExecutionProvider"])
    default_input = default_session.get_inputs()[0].name
    perf = None if args.no_perf else shutil.which("perf")
    with tempfile.TemporaryDirectory(prefix="pcclip-shares-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            with ServeProcess(bundle, redis.url, Path(tmp) / "serve.log", env=env) as server:
                image_load(server, photos_b64, 32, args.concurrency)  # warm-up: every batch shape once
                me, served = psutil.Process(), psutil.Process(server.proc.pid)
                for r in range(args.rounds):
                    recorder = None
                    if r == 0 and perf:
                        data = Path(tmp) / "perf.data"
                        recorder = subprocess.Popen([perf, "record", "-F", "499", "-p", str(server.proc.pid), "-o", str(data)],
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        time.sleep(0.5)
                    cpu0 = (cpu_seconds(served), cpu_seconds(me))
                    row = {"service": image_load(server, photos_b64, args.requests, args.concurrency)}
                    cpu1 = (cpu_seconds(served), cpu_seconds(me))
                    wall = row["service"]["wall_s"]
                    row["cpu"] = {"cores": os.cpu_count(), "server_s": cpu1[0] - cpu0[0], "client_s": cpu1[1] - cpu0[1],
                                  "server_share_of_cores": (cpu1[0] - cpu0[0]) / (wall * os.cpu_count()),
                                  "client_share_of_cores": (cpu1[1] - cpu0[1]) / (wall * os.cpu_count())}
                    if recorder is not None:
                        recorder.send_signal(signal.SIGINT)
                        recorder.wait(timeout=60)
                        report = subprocess.run([perf, "report", "-i", str(data), "--sort", "dso", "--stdio", "-q"],
                                                capture_output=True, text=True, timeout=300).stdout
                        row["perf_by_step"], row["perf_by_dso"] = perf_shares(report)
                        symbols = subprocess.run([perf, "report", "-i", str(data), "--sort", "dso,sym", "--stdio", "-q"],
                                                 capture_output=True, text=True, timeout=300).stdout
                        row["perf_top_symbols"] = [" ".join(line.split()) for line in symbols.splitlines() if line.strip()][:20]
                    batch = max(1, round(row["service"]["mean_batch"]))
                    row["raw_batch"] = batch
                    row["raw_service_options"] = raw_tower_throughput(enc.encode_pixels, pixels, batch)
                    row["raw_ort_defaults"] = raw_tower_throughput(
                        lambda x: default_session.run(None, {default_input: x}), pixels, batch)
                    s = row["service"]["images_per_s"]
                    row["over_raw_service_options"] = s / row["raw_service_options"]
                    row["over_raw_ort_defaults"] = s / row["raw_ort_defaults"]
                    out["rounds"].append(row)
                    print(f"round {r + 1}: service {s:.1f} images/s (batch {row['service']['mean_batch']:.1f}, p50 {row['service']['p50'] * 1e3:.0f} ms); "
                          f"raw at batch {batch}: {row['raw_service_options']:.1f} (service's options), {row['raw_ort_defaults']:.1f} (ORT defaults); "
                          f"service / raw {row['over_raw_service_options']:.2f} / {row['over_raw_ort_defaults']:.2f}; "
                          f"CPU of {os.cpu_count()} cores: server {row['cpu']['server_share_of_cores']:.0%}, client {row['cpu']['client_share_of_cores']:.0%}; "
                          f"tower calls {row['service']['tower_call_s_per_s']:.2f} s/s, decoding {row['service']['decode_s_per_s']:.2f} s/s",
                          flush=True)
                    if "perf_by_step" in row:
                        print("  server CPU by step (perf): " + ", ".join(f"{k} {v:.1f}%" for k, v in sorted(row["perf_by_step"].items(), key=lambda kv: -kv[1])))
                        print("  by shared object: " + ", ".join(f"{k} {v:.1f}%" for k, v in list(row["perf_by_dso"].items())[:8]), flush=True)
                        print("  top symbols:\n    " + "\n    ".join(row["perf_top_symbols"]), flush=True)
        finally:
            redis.stop()
    out["machine_after"] = machine_note()
    for key in ("over_raw_service_options", "over_raw_ort_defaults"):
        out[f"{key}_median"] = statistics.median(row[key] for row in out["rounds"])
    ratio = min(out["over_raw_service_options_median"], out["over_raw_ort_defaults_median"])
    out["targets"] = [{"target": "image embedding c=16 >= 0.9x raw ORT at the service's batch size (the faster raw)", "figure": round(ratio, 2),
                       "met": ratio >= 0.9}]
    finish(out, "image_shares")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
