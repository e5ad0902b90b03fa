"""Training throughput (pairs/s) of `pcclip train` with cached image embeddings.

    .venv/bin/python -m bench.training [--pairs 2048] [--batch-size 64] [--steps 4 24]

Writes attribute pairs with `pcclip pairs`, runs `pcclip train` once to fill the on-disk image
feature cache, then twice more with the cache warm for `--steps` optimizer steps (few, many);
pairs/s = (many - few) x batch size / (time(many) - time(few)), so process start, model load and
cache reads cancel out. Everything runs as subprocesses, as a user would run them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import REPO_ROOT
from bench.serving import RESULTS_DIR, machine_note


def _run(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pcclip", *args], check=True, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, nargs=2, default=[4, 24])
    parser.add_argument("--model", default="pcclip-mini")
    args = parser.parse_args(argv)
    few, many = args.steps
    out = {"machine_before": machine_note(), "model": args.model, "batch_size": args.batch_size, "pairs": args.pairs}
    with tempfile.TemporaryDirectory(prefix="pcclip-train-bench-") as tmp:
        tmp = Path(tmp)
        pairs = tmp / "pairs.jsonl"
        _run(["pairs", "--writer", "attributes", "--n", str(args.pairs), "--out", str(pairs)])
        common = ["train", "--model", args.model, "--pairs", str(pairs), "--batch-size", str(args.batch_size),
                  "--cache-dir", str(tmp / "cache"), "--device", "cpu"]
        out["cold_cache_s"] = _run([*common, "--max-steps", "1", "--out", str(tmp / "fill")])
        print(f"filled the image feature cache ({args.pairs} pairs) in {out['cold_cache_s']:.1f} s", flush=True)
        out["few_steps_s"] = _run([*common, "--max-steps", str(few), "--out", str(tmp / "few")])
        out["many_steps_s"] = _run([*common, "--max-steps", str(many), "--out", str(tmp / "many")])
    out["pairs_per_s"] = (many - few) * args.batch_size / (out["many_steps_s"] - out["few_steps_s"])
    out["machine_after"] = machine_note()
    print(f"{few} steps: {out['few_steps_s']:.1f} s, {many} steps: {out['many_steps_s']:.1f} s (batch {args.batch_size}, warm cache)")
    print(f"training throughput: {out['pairs_per_s']:.1f} pairs/s")
    print(f"machine before {out['machine_before']}\nmachine after {out['machine_after']}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "training.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
