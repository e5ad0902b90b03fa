"""What the benchmarks and the load tests share: real processes on loopback and a bounded load client.

- `RedisServer`: a redis-server on a free 127.0.0.1 port (AOF, fsync always) in a directory;
  `stop()` then `start()` keeps the data (same port), so a test can kill Redis and bring it back.
- `ServeProcess`: `python -m pcclip serve` (uvicorn) on a free 127.0.0.1 port, with the time from
  process start to the first 200 from /readyz, and its resident memory (`psutil`).
- `run_load`: a fixed number of requests at a fixed concurrency with httpx's async client, with
  an overall deadline; returns every request's status and latency.
- `ensure_bundle`: the default model's ONNX bundle, exported once with `pcclip export`.

Everything here talks to 127.0.0.1 only and stops by itself (deadlines on every wait).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO_ROOT / "artifacts" / "pcclip-mini-onnx"
DATA_DIR = Path(os.environ.get("PCCLIP_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_bundle(path: str | Path = DEFAULT_BUNDLE, model: str = "pcclip-mini") -> Path:
    """The bundle directory, exported with `pcclip export` if it has no manifest yet."""
    path = Path(path)
    if not (path / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "pcclip", "export", "--model", model, "--out", str(path)], check=True, cwd=REPO_ROOT)
    return path


def bench_parser(doc: str, requests: int, concurrency: int):
    """The arguments every load benchmark takes: --bundle, --requests, --concurrency."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="ONNX bundle (exported with pcclip export if missing)")
    parser.add_argument("--requests", type=int, default=requests)
    parser.add_argument("--concurrency", type=int, default=concurrency)
    return parser


def sample_photos(n: int = 16, data_dir: Path = DATA_DIR) -> list[bytes]:
    """`n` real CUB photos (one per class, classes in sorted order) as file bytes."""
    root = data_dir / "cub100" / "images"
    if not root.is_dir():
        raise FileNotFoundError(f"shared data not found at {data_dir} (set PCCLIP_DATA)")
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    photos = []
    for c in classes:
        files = sorted(c.glob("*.jpg"))
        if files:
            photos.append(files[0].read_bytes())
        if len(photos) == n:
            break
    return photos


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def terminate(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, grace_s: float = 10.0) -> None:
    """Send `sig` to a child we started; SIGKILL it if it is still there after `grace_s`."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class RedisServer:
    """A redis-server process on 127.0.0.1 with AOF persistence in `directory`."""

    def __init__(self, directory: str | Path, port: int | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> "RedisServer":
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (bash scripts/setup.sh installs it)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.directory), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self.command("PING").startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: the outage a crash causes (no shutdown save; the AOF has every acknowledged write)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        terminate(self.proc, signal.SIGTERM, grace_s=10)
        self.proc = None

    def client(self):
        """A synchronous redis-py client of this server (for checks)."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def command(self, *args: str) -> bytes:
        """One inline command, the raw reply (PING)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall((" ".join(args) + "\r\n").encode())
            return s.recv(1 << 20)


class ServeProcess:
    """`pcclip serve [--model SPEC] [ARGS]` in its own process on 127.0.0.1; `cold_start_s` once ready."""

    def __init__(self, model: str | Path | None, redis_url: str, log_path: str | Path, env: dict | None = None, port: int | None = None,
                 args: tuple[str, ...] = (), cwd: str | Path = REPO_ROOT):
        self.model = None if model is None else str(model)  # None: `pcclip serve`'s own default
        self.args = tuple(args)
        self.cwd = Path(cwd)  # another checkout serves its own code (PYTHONPATH in env)
        self.redis_url = redis_url
        self.log_path = Path(log_path)
        self.extra_env = {k: str(v) for k, v in (env or {}).items()}
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.cold_start_s: float | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 240.0) -> "ServeProcess":
        import httpx

        env = dict(os.environ, PCCLIP_REDIS_URL=self.redis_url, PCCLIP_LOG_LEVEL="warning", **self.extra_env)
        self._log = open(self.log_path, "w+")
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pcclip", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             *(("--model", self.model) if self.model else ()), *self.args],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.cwd,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/readyz", timeout=1.0).status_code == 200:
                    self.cold_start_s = time.perf_counter() - started
                    return self
            time.sleep(0.02)
        log = self.log_tail()
        self.stop()
        raise RuntimeError(f"pcclip serve did not become ready in {timeout_s:.0f} s:\n{log}")

    def log_tail(self, n: int = 4000) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def mapped_files(self) -> set[str]:
        """Paths of the files the server process has mapped (shared libraries included)."""
        maps = Path(f"/proc/{self.proc.pid}/maps").read_text()
        return {line.split(None, 5)[5] for line in maps.splitlines() if len(line.split(None, 5)) == 6}

    def rss_bytes(self) -> int:
        """Resident memory of the server process (uvicorn runs the app in this process with one worker)."""
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM (graceful), SIGKILL after 30 s; the exit code."""
        if self.proc is None:
            return None
        terminate(self.proc, signal.SIGTERM, grace_s=30)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


START_TIMEOUT_S = 900.0  # a model load on a busy 2-core machine can take minutes


@contextlib.contextmanager
def started(server: ServeProcess, timeout_s: float = START_TIMEOUT_S):
    """`server` started (waiting up to `timeout_s` for /readyz), stopped on exit."""
    server.start(timeout_s=timeout_s)
    try:
        yield server
    finally:
        server.stop()


# -- the load client --------------------------------------------------------------------------
@dataclass
class Request:
    """One HTTP request of a load run; `tag` groups results (e.g. the route)."""

    method: str
    path: str
    json: object = None
    tag: str = ""
    headers: dict | None = None


@dataclass
class Result:
    tag: str
    status: int  # 0: the client saw a transport error (connection refused, timeout)
    latency_s: float
    error: str | None = None
    retry_after: str | None = None
    body: bytes = b""
    index: int = -1  # position in the list of requests given to run_load


@dataclass
class LoadReport:
    results: list[Result]
    wall_s: float
    concurrency: int
    timed_out: bool = False
    by_status: dict = field(default_factory=dict)

    def __post_init__(self):
        for r in self.results:
            self.by_status[r.status] = self.by_status.get(r.status, 0) + 1

    def count(self, predicate: Callable[[Result], bool]) -> int:
        return sum(1 for r in self.results if predicate(r))

    def throughput(self, tag: str | None = None) -> float:
        n = len([r for r in self.results if tag is None or r.tag == tag])
        return n / self.wall_s if self.wall_s > 0 else 0.0

    def latencies(self, tag: str | None = None, ok_only: bool = True) -> np.ndarray:
        return np.array([r.latency_s for r in self.results if (tag is None or r.tag == tag) and (not ok_only or r.status == 200)])

    def percentiles(self, tag: str | None = None) -> dict[str, float]:
        lat = self.latencies(tag)
        if len(lat) == 0:
            return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


async def _run_load_async(base_url: str, requests: list[Request], concurrency: int, deadline_s: float,
                          timeout_s: float, keep_body: bool, progress) -> LoadReport:
    import httpx

    results: list[Result] = []
    queue: asyncio.Queue = asyncio.Queue()
    for i, r in enumerate(requests):
        queue.put_nowait((i, r))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.perf_counter()
    stop_at = started + deadline_s
    timed_out = False

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout_s) as client:
        async def worker():
            nonlocal timed_out
            while True:
                try:
                    index, req = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if time.perf_counter() > stop_at:
                    timed_out = True
                    return
                t0 = time.perf_counter()
                try:
                    resp = await client.request(req.method, req.path, json=req.json, headers=req.headers)
                    res = Result(req.tag, resp.status_code, time.perf_counter() - t0,
                                 retry_after=resp.headers.get("retry-after"),
                                 body=resp.content if keep_body or resp.status_code >= 500 else b"", index=index)
                except httpx.HTTPError as err:
                    res = Result(req.tag, 0, time.perf_counter() - t0, error=f"{type(err).__name__}: {err}", index=index)
                results.append(res)
                if progress is not None:
                    progress.update(1)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadReport(results, time.perf_counter() - started, concurrency, timed_out)


def run_load(base_url: str, requests: list[Request], concurrency: int, deadline_s: float = 600.0,
             timeout_s: float = 60.0, keep_body: bool = False, show_progress: bool = False) -> LoadReport:
    """Send `requests` with `concurrency` connections (each request once); stop at `deadline_s`."""
    progress = None
    if show_progress:
        from tqdm import tqdm

        progress = tqdm(total=len(requests), desc=f"c={concurrency}", leave=False, unit="req", disable=None)
    try:
        return asyncio.run(_run_load_async(base_url, requests, concurrency, deadline_s, timeout_s, keep_body, progress))
    finally:
        if progress is not None:
            progress.close()


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0.0 if absent) from /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
