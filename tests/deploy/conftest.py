"""Deployment fixtures: the Dockerfiles' entry commands run outside Docker, a real redis-server.

No Docker engine here, so what a container would run (its ENTRYPOINT + CMD with its ENV) runs as
a local process instead, with only the host/port, the Redis URL and the model volume path
adapted to loopback and temporary directories.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.service.conftest import RedisServer, free_port  # a real redis-server, AOF on

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"
VENV_BIN = Path(sys.executable).parent
# Variables that describe the image's filesystem, not the service: the local process keeps its own.
IMAGE_ONLY_ENV = {"PATH", "PIP_DISABLE_PIP_VERSION_CHECK", "DEBIAN_FRONTEND"}


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_until(check, timeout: float, what: str, interval: float = 0.25):
    """Poll `check()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            last = check()
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@dataclass
class ImageCommand:
    """What a Dockerfile's container runs: argv (ENTRYPOINT + CMD) and the ENV it sets."""

    dockerfile: Path
    argv: list[str]
    env: dict[str, str]
    healthcheck: list[str] | None = None
    user: str | None = None

    @classmethod
    def parse(cls, dockerfile: Path) -> "ImageCommand":
        from dockerfile_parse import DockerfileParser

        parser = DockerfileParser(str(dockerfile))
        entry, cmd, health, user = [], [], None, None
        for ins in parser.structure:  # the last FROM stage wins, as in the image
            kind, value = ins["instruction"], ins["value"]
            if kind == "FROM":
                entry, cmd, health, user = [], [], None, None
            elif kind in ("ENTRYPOINT", "CMD"):
                argv = json.loads(value) if value.lstrip().startswith("[") else ["/bin/sh", "-c", value]
                if kind == "ENTRYPOINT":
                    entry, cmd = argv, []  # a new ENTRYPOINT resets an inherited CMD
                else:
                    cmd = argv
            elif kind == "HEALTHCHECK":
                rest = value.split("CMD", 1)[1].strip()
                health = json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
            elif kind == "USER":
                user = value.strip()
        return cls(Path(dockerfile), entry + cmd, dict(parser.envs), health, user)

    def local_argv(self, argv: list[str] | None = None) -> list[str]:
        """The same command with its program taken from this virtual environment (pcclip, python, torchrun)."""
        argv = list(argv or self.argv)
        local = shutil.which(argv[0], path=str(VENV_BIN)) or shutil.which(argv[0])
        if local is None:
            pytest.fail(f"{argv[0]} (the entry command of {self.dockerfile.name}) is not installed here")
        return [local, *argv[1:]]

    def local_env(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({k: v for k, v in self.env.items() if k not in IMAGE_ONLY_ENV})
        env.update(overrides)
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        return env


def stop_process(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class RunningApi:
    """An API process started from a Dockerfile's command."""

    image: ImageCommand
    proc: subprocess.Popen
    port: int
    log_path: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def pcclip_commands() -> set[str]:
    """The subcommands `pcclip` has in this checkout."""
    from pcclip.cli import build_parser

    return set(build_parser()._subparsers._group_actions[0].choices)


def require_command(name: str) -> None:
    if name not in pcclip_commands():
        pytest.skip(f"`pcclip {name}` is not in this checkout yet")


def start_image_api(dockerfile: Path, tmp: Path, redis_url: str, bundle: Path, ready_timeout: float = 120) -> RunningApi:
    """Run the API image's entry command locally: same argv and ENV, loopback port, local Redis and bundle."""
    require_command("serve")
    image = ImageCommand.parse(dockerfile)
    port = free_port()
    # The image serves the bundle at PCCLIP_MODEL inside the model volume; here that path is the local bundle.
    env = image.local_env(PCCLIP_HOST="127.0.0.1", PCCLIP_PORT=str(port), PCCLIP_REDIS_URL=redis_url,
                          PCCLIP_MODEL=str(bundle))
    log_path = tmp / f"{dockerfile.stem}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(image.local_argv(), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    api = RunningApi(image, proc, port, log_path, env)

    def ready():
        if proc.poll() is not None:
            pytest.fail(f"`{shlex.join(image.argv)}` exited with {proc.returncode}:\n{api.log()}")
        return http_get(api.base_url + "/readyz", timeout=2)[0] == 200

    try:
        wait_until(ready, ready_timeout, f"/readyz of `{shlex.join(image.argv)}`")
    except BaseException:
        stop_process(proc)
        raise
    return api


@pytest.fixture(scope="session")
def deploy_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("deploy-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def api_from_image(request, tmp_path_factory, deploy_redis):
    """The slim API image's command, running (stopped at the end of the session)."""
    require_command("serve")
    mini_bundle = request.getfixturevalue("mini_bundle")  # exported only when there is a service to serve it
    api = start_image_api(DOCKER_DIR / "api.Dockerfile", tmp_path_factory.mktemp("api"), deploy_redis.url, mini_bundle)
    yield api
    stop_process(api.proc)
