"""Collections through the real service: ingest speed, rank = /v1/rank, restart.

One redis-server (AOF) and one `pcclip serve` on 127.0.0.1, the CUB test photos (all classes):

1. /v1/rank "a larger bird" over every photo, in requests of `--batch` photos, `--concurrency` in
   flight: the service's image-embedding throughput (photos/s; the text is embedded once and
   cached) and each photo's score;
2. `pcclip index` of the same photos (a JSONL manifest; through the service, same batch and
   concurrency): its photos/s, and the ratio to (1), measured in the same run;
   Beside both, where the time went (the profile of an ingest batch): CPU seconds per photo of the
   server, redis-server and the client process, and from the server's /metrics the image tower's
   seconds per photo and the share of the phase it was busy, and the mean request time per batch;
3. POST /v1/collections/{name}/rank "a larger bird" over the whole collection: Spearman with the
   classes' size score, beside the Spearman of the /v1/rank scores, and whether the orders agree;
4. the server restarted: the collection is all there (count, same ranking), and its load time.

    .venv/bin/python -m bench.collection_service [--limit N]     # at nice 0: the ingest ratio is a speed figure

Writes docs/results/collections/service.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from bench.harness import REPO_ROOT, START_TIMEOUT_S, RedisServer, ServeProcess, started

OUT = REPO_ROOT / "docs" / "results" / "collections" / "service.json"
ATTRIBUTE = "a larger bird"


def _metric_sums(client) -> dict[str, float]:
    """Sums and counts of the server's histograms (name{labels}_sum / _count -> value) from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
                out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


class PhaseProfile:
    """CPU seconds of the server, redis-server and the client, and the server's metric sums, over one phase."""

    def __init__(self, client, server_pid: int, redis_pid: int, child_client: bool):
        import resource

        import psutil

        self.client, self.child_client = client, child_client
        self.procs = {"server": psutil.Process(server_pid), "redis": psutil.Process(redis_pid)}
        self._client_cpu = (lambda: sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])) if child_client else \
            (lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2]))

    def __enter__(self):
        self.cpu0 = {k: sum(p.cpu_times()[:2]) for k, p in self.procs.items()} | {"client": self._client_cpu()}
        self.metrics0, self.t0 = _metric_sums(self.client), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = {k: sum(p.cpu_times()[:2]) - self.cpu0[k] for k, p in self.procs.items()} | {"client": self._client_cpu() - self.cpu0["client"]}
        after = _metric_sums(self.client)
        self.metrics = {k: v - self.metrics0.get(k, 0.0) for k, v in after.items()}

    def report(self, photos: int, route: str) -> dict:
        m = self.metrics
        tower = m.get("pcclip_inference_seconds_sum{tower=image}", 0.0)
        requests = m.get(f"pcclip_request_seconds_count{{route={route}}}", 0.0)
        return {
            "wall_s": round(self.wall, 2), "photos": photos,
            "cpu_ms_per_photo": {k: round(1000 * v / photos, 2) for k, v in self.cpu.items()},
            "image_tower_ms_per_photo": round(1000 * tower / photos, 2),
            "image_tower_busy_share": round(tower / self.wall, 3),
            "image_preprocess_ms_per_photo": round(1000 * sum(v for k, v in m.items() if k.startswith("pcclip_preprocess_seconds_sum")) / photos, 2),
            "mean_request_s": round(m.get(f"pcclip_request_seconds_sum{{route={route}}}", 0.0) / requests, 3) if requests else None,
            "requests": int(requests),
        }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pcclip-mini")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test photos")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=3, help="requests in flight in both phases (pcclip index's default)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)

    from scipy.stats import spearmanr

    from training.data import AttributeTable, CubDataset, default_data_dir, size_score

    root = default_data_dir()
    cub = CubDataset(root)
    photos = [im for c in cub.classes for im in cub.images_of(c, "test")][: args.limit]
    table = AttributeTable.from_cub(root)
    sizes = np.array([size_score(table, im.class_name) for im in photos])
    files = [root / im.path for im in photos]  # im.path: cub100/images/<Class>/NNNN.jpg
    ids = [Path(im.path).relative_to("cub100/images").as_posix() for im in photos]
    result = {"command": f"nice -n {os.nice(0)} .venv/bin/python -m bench.collection_service " + " ".join(sys.argv[1:] if argv is None else argv),
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT).stdout.strip(),
              "photos": len(photos), "batch": args.batch, "concurrency": args.concurrency, "nice": os.nice(0),
              "uptime_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    with tempfile.TemporaryDirectory(prefix="pcclip-coll-") as tmp:
        tmp = Path(tmp)
        redis = RedisServer(tmp / "redis").start()
        try:
            server = ServeProcess(args.model, redis.url, tmp / "serve.log").start(timeout_s=START_TIMEOUT_S)
            try:
                client = httpx.Client(base_url=server.base_url, timeout=300)
                result["model"] = client.get("/readyz").json()["model"]
                client.post("/v1/embeddings", json={"input": ATTRIBUTE})  # the attribute text cached before timing
                # 1. /v1/rank over every photo: throughput and scores
                chunks = [list(range(i, min(len(photos), i + args.batch))) for i in range(0, len(photos), args.batch)]

                def rank_chunk(rows):
                    body = {"attribute": ATTRIBUTE, "images": [base64.b64encode(files[r].read_bytes()).decode() for r in rows]}
                    r = client.post("/v1/rank", json=body)
                    r.raise_for_status()
                    return rows, r.json()["ranking"]

                scores = np.zeros(len(photos))
                t0 = time.perf_counter()
                with PhaseProfile(client, server.proc.pid, redis.proc.pid, child_client=False) as rank_profile, \
                        ThreadPoolExecutor(args.concurrency) as pool:
                    for rows, ranking in pool.map(rank_chunk, chunks):
                        for item in ranking:
                            scores[rows[item["index"]]] = item["score"]
                embed_s = time.perf_counter() - t0
                result["profile_rank"] = rank_profile.report(len(photos), "/v1/rank")
                result["service_rank_photos_per_s"] = round(len(photos) / embed_s, 2)
                # 2. pcclip index of the same photos
                manifest = tmp / "manifest.jsonl"
                manifest.write_text("".join(json.dumps({"path": str(f), "id": i, "metadata": {"class": im.class_name}}) + "\n"
                                            for f, i, im in zip(files, ids, photos)))
                cmd = [sys.executable, "-m", "pcclip", "index", "cub-test", str(manifest), "--url", server.base_url,
                       "--batch-size", str(args.batch), "--concurrency", str(args.concurrency)]
                t0 = time.perf_counter()
                with PhaseProfile(client, server.proc.pid, redis.proc.pid, child_client=True) as index_profile:
                    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
                index_wall_s = time.perf_counter() - t0
                result["profile_index"] = index_profile.report(len(photos), "/v1/collections/{name}/items")
                summary = json.loads(run.stdout.strip().splitlines()[-1])
                result["index"] = summary | {"wall_s_with_start_up": round(index_wall_s, 2)}
                result["index_photos_per_s"] = summary["images_per_s"]
                result["ingest_ratio"] = round(summary["images_per_s"] / result["service_rank_photos_per_s"], 3)
                # 3. collection rank vs /v1/rank
                ranked = client.post("/v1/collections/cub-test/rank", json={"attribute": ATTRIBUTE, "top_k": len(photos)}).json()["results"]
                coll_scores = {h["id"]: h["score"] for h in ranked}
                cs = np.array([coll_scores[i] for i in ids])
                direct_order = [ids[i] for i in np.argsort(-scores, kind="stable")]
                result["spearman_v1_rank"] = round(float(spearmanr(scores, sizes).statistic), 4)
                result["spearman_collection_rank"] = round(float(spearmanr(cs, sizes).statistic), 4)
                result["max_abs_score_difference"] = float(np.abs(cs - scores).max())
                result["same_order"] = [h["id"] for h in ranked] == direct_order
                result["order_spearman_between_the_two"] = round(float(spearmanr(cs, scores).statistic), 6)
                print(json.dumps(result), flush=True)  # steps 1-3, should the restart fail
            finally:
                server.stop()
            # 4. restart
            with started(ServeProcess(args.model, redis.url, tmp / "serve2.log")) as server:
                client = httpx.Client(base_url=server.base_url, timeout=300)
                ready = client.get("/readyz").json()
                again = client.post("/v1/collections/cub-test/rank", json={"attribute": ATTRIBUTE, "top_k": len(photos)}).json()["results"]
                result["after_restart"] = {"count": client.get("/v1/collections/cub-test/count").json()["count"],
                                           "load_from_redis_s": round(ready["collections"]["loaded_in_s"], 3),
                                           "same_ranking": [h["id"] for h in again] == [h["id"] for h in ranked]}
        finally:
            redis.stop()
    result["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
