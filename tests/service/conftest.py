"""Service fixtures: a real redis-server on a free loopback port, the default model loaded once, clients."""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server process with AOF persistence in a temporary directory; stop() and start() again keep the data."""

    def __init__(self, directory: Path, port: int | None = None):
        self.directory = Path(directory)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (bash scripts/setup.sh installs it)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.directory), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def command(self, *args: str) -> bytes:
        """Send one inline command and return the raw reply (for FLUSHALL and checks)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall((" ".join(args) + "\r\n").encode())
            return s.recv(65536)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """The shared server, emptied for each test."""
    assert redis_server.command("FLUSHALL").startswith(b"+OK")
    return redis_server.url


@pytest.fixture(scope="session")
def encoder(pcclip_mini_encoder):
    """pcclip-mini (as it exists now: trained weights if shipped, else untrained heads), loaded once."""
    return pcclip_mini_encoder


def make_settings(redis_url: str, **overrides):
    from service.settings import Settings

    # redis_timeout_s: a Redis timeout marks Redis down (503s until the next check); 0.3 s flaked on a loaded 2-core machine
    values = dict(redis_url=redis_url, redis_check_interval_s=0.2, redis_timeout_s=2.0, max_wait_ms=2.0)
    values.update(overrides)
    return Settings(**values)


@contextlib.contextmanager
def service_client(encoder, redis_url: str, **overrides):
    """A TestClient with the lifespan run (model passed in, Redis real)."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    app = create_app(make_settings(redis_url, **overrides), encoder=encoder)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def client(encoder, redis_url):
    with service_client(encoder, redis_url) as c:
        yield c


@pytest.fixture(scope="session")
def photo_b64(cub_photos) -> list[str]:
    """Six real CUB photos as base64 strings."""
    return [base64.b64encode(p.read_bytes()).decode() for p in cub_photos]


@pytest.fixture(scope="session")
def photo_bytes(cub_photos) -> list[bytes]:
    return [p.read_bytes() for p in cub_photos]


@pytest.fixture(scope="module")
def live_url(encoder, redis_server):
    """The app under uvicorn on a loopback port, for clients that speak real HTTP (openai, curl)."""
    import httpx
    import uvicorn

    from service.app import create_app

    port = free_port()
    app = create_app(make_settings(redis_server.url), encoder=encoder)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                break
        time.sleep(0.1)
    yield url
    server.should_exit = True
    thread.join(timeout=15)
