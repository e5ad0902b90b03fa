"""Load and fault fixtures: the default model's bundle, a real redis-server and a real `pcclip serve` process.

Everything runs on 127.0.0.1, bounded in count and time (see bench/harness.py).
"""

from __future__ import annotations

import pytest

from bench.harness import RedisServer, ServeProcess, b64, sample_photos


@pytest.fixture(scope="session")
def load_photos_b64(data_dir) -> list[str]:
    return [b64(p) for p in sample_photos(16, data_dir)]


@pytest.fixture
def redis_process(tmp_path):
    """A redis-server of this test only (a fault test kills it)."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def serve(mini_bundle, redis_process, tmp_path):
    """Start `pcclip serve --model <bundle>` with extra PCCLIP_* settings: `serve(**env)`; stopped after the test."""
    started = []

    def start(**env) -> ServeProcess:
        env.setdefault("PCCLIP_REDIS_CHECK_INTERVAL_S", "0.2")
        env.setdefault("PCCLIP_REDIS_TIMEOUT_S", "2")  # 0.5 s flaked (a false "Redis down") on a loaded machine
        proc = ServeProcess(mini_bundle, redis_process.url, tmp_path / f"serve-{len(started)}.log", env=env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
