"""docker-compose.yml: valid for Debian's docker-compose, and wired as the README says."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from urllib.parse import urlparse

import pytest
import yaml

from tests.deploy.conftest import DOCKER_DIR, REPO_ROOT, ImageCommand

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"


def compose(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose") or pytest.fail("docker-compose is not installed (bash scripts/setup.sh)")
    return subprocess.run([exe, "-f", str(COMPOSE_FILE), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def config() -> dict:
    """The compose file as docker-compose resolves it (anchors and defaults expanded; v1 lists every profile)."""
    result = compose("config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    return env if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def mounts(service: dict) -> dict[str, dict]:
    """target -> {type, source, target, read_only} of each `SOURCE:TARGET:MODE` that `config` prints."""
    out = {}
    for entry in service.get("volumes", []):
        source, target, mode = (entry.split(":") + ["rw"])[:3]
        kind = "bind" if source.startswith(("/", ".")) else "volume"
        out[target] = {"type": kind, "source": source, "target": target, "read_only": mode == "ro"}
    return out


def test_compose_file_validates_offline():
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr
    for profile in ("gpu", "train"):
        result = compose("--profile", profile, "config", "-q")
        assert result.returncode == 0, result.stderr


# What `docker-compose build/up/ps/run` do after reading the file and before talking to the engine:
# compose v1 turns each service (profile-only ones included) into a container spec, GPU device
# requests too. `config -q` stops before that step.
V1_PROJECT_SCRIPT = """
import sys
from compose.config import config
from compose.config.environment import Environment
from compose.project import Project
project_dir, compose_file = sys.argv[1:]
details = config.find(project_dir, [compose_file], Environment.from_env_file(project_dir))
for service in config.load(details).services:
    Project.get_device_requests(None, dict(service))  # compose v1's own check (self is unused)
    print(service["name"])
"""


def compose_v1_python() -> str:
    """The interpreter that runs Debian's docker-compose (its shebang), which can import `compose`."""
    exe = shutil.which("docker-compose") or pytest.fail("docker-compose is not installed (bash scripts/setup.sh)")
    shebang = open(exe, "rb").readline().decode().strip()
    assert shebang.startswith("#!"), exe
    return shebang[2:].split()[0]


def test_compose_v1_turns_every_service_into_a_container_spec():
    result = subprocess.run([compose_v1_python(), "-c", V1_PROJECT_SCRIPT, str(REPO_ROOT), str(COMPOSE_FILE)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"api", "api-gpu", "export", "train", "pairs"} <= set(result.stdout.split())


@pytest.mark.skipif(os.environ.get("PCCLIP_DOCKER_TESTS") != "1", reason="needs a Docker engine (PCCLIP_DOCKER_TESTS=1)")
def test_compose_v1_ps_with_every_profile_against_the_engine():
    result = compose("--profile", "gpu", "--profile", "train", "ps")
    assert result.returncode == 0, result.stderr[-3000:]


def test_profiles_gate_gpu_and_training(config):
    services = config["services"]
    assert {"api", "redis", "prometheus", "grafana", "lb", "export"} <= set(services)
    assert not services["api"].get("profiles")
    assert services["api-gpu"]["profiles"] == ["gpu"]
    assert services["train"]["profiles"] == ["train"] and services["pairs"]["profiles"] == ["train"]
    for name in ("api-gpu", "train"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices), name
        # compose v1 takes an integer or "all" (an interpolated "${VAR:-1}" arrives as a string)
        assert all(d["count"] == "all" or type(d["count"]) is int for d in devices), devices


@pytest.mark.parametrize("api_name", ["api", "api-gpu"])
def test_api_uses_redis_and_the_model_volume(config, api_name):
    services, api = config["services"], config["services"][api_name]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["depends_on"]["export"]["condition"] == "service_completed_successfully"
    env = env_of(api)
    redis_url = urlparse(env["PCCLIP_REDIS_URL"])
    assert redis_url.hostname == "redis" and (redis_url.port or 6379) == 6379
    # the bundle the api serves is the one the export service writes, on the same named volume
    model = env["PCCLIP_MODEL"]
    volume = next(m for target, m in mounts(api).items() if model.startswith(target + "/"))
    assert volume["type"] == "volume" and volume["read_only"] is True
    export = services["export"]
    assert mounts(export)[volume["target"]]["source"] == volume["source"]
    assert f"--out {model}" in " ".join(export["command"])
    # the images' defaults agree with compose
    image = ImageCommand.parse(REPO_ROOT / api["build"]["dockerfile"])
    assert image.env["PCCLIP_PORT"] == env["PCCLIP_PORT"] and image.env["PCCLIP_MODEL"] == model
    assert image.argv == ["pcclip", "serve"]


def test_export_builds_cpu_torch_and_training_keeps_cuda(config):
    services = config["services"]
    export, train = services["export"], services["train"]
    # exporting needs no GPU: CPU torch (~200 MB), not PyPI's CUDA build (~2.5 GB of downloads)
    assert export["build"]["args"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert train["build"]["args"]["TORCH_INDEX_URL"] == "https://pypi.org/simple"
    assert export["build"]["dockerfile"] == train["build"]["dockerfile"]
    assert export["image"] != train["image"]  # two builds of one Dockerfile, two tags
    # a torch wheel in docker/wheels/ (the CPU build, for sites without that index) is offered to pip
    dockerfile = (REPO_ROOT / export["build"]["dockerfile"]).read_text()
    assert "source=docker/wheels" in dockerfile and "--find-links /tmp/wheels" in dockerfile
    assert (REPO_ROOT / "docker/wheels").is_dir()


def test_api_replicas_scale_behind_the_load_balancer(config):
    services = config["services"]
    api_port = env_of(services["api"])["PCCLIP_PORT"]
    # replicas publish no host port (two could not bind the same one); they expose the serving port
    assert not services["api"].get("ports") and api_port in [str(p) for p in services["api"]["expose"]]
    assert "api" in services["api-gpu"]["networks"]["default"]["aliases"]
    lb = services["lb"]
    assert lb["ports"] and "api" in lb["depends_on"]
    conf_mount = mounts(lb)["/etc/nginx/nginx.conf"]
    conf = (REPO_ROOT / "docker/nginx/nginx.conf").read_text()
    assert conf_mount["source"] == str(REPO_ROOT / "docker/nginx/nginx.conf")
    assert re.search(rf"set \$api_upstream http://api:{api_port};", conf)
    assert "resolver 127.0.0.11" in conf  # re-resolves `api`, so new replicas are picked up
    listen = re.search(r"listen (\d+);", conf).group(1)
    assert any(str(p["target"]) == listen for p in lb["ports"])


def test_prometheus_targets_the_api_metrics_port(config):
    services = config["services"]
    prom = services["prometheus"]
    conf_mount = mounts(prom)["/etc/prometheus/prometheus.yml"]
    assert conf_mount["source"] == str(DOCKER_DIR / "prometheus/prometheus.yml")
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    scrape = yaml.safe_load((DOCKER_DIR / "prometheus/prometheus.yml").read_text())
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "pcclip-api")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["api"] and str(sd["port"]) == env_of(services["api"])["PCCLIP_PORT"]
    assert mounts(prom)["/prometheus"]["type"] == "volume"


def test_redis_persists_with_aof_on_a_named_volume(config):
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    data = mounts(redis)["/data"]
    assert data["type"] == "volume" and data["source"] in config["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_grafana_is_provisioned_from_docker_dir(config):
    grafana = config["services"]["grafana"]
    m = mounts(grafana)
    assert m["/etc/grafana/provisioning"]["source"] == str(DOCKER_DIR / "grafana/provisioning")
    assert m["/var/lib/grafana/dashboards"]["source"] == str(DOCKER_DIR / "grafana/dashboards")
    datasource = yaml.safe_load((DOCKER_DIR / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    url = urlparse(datasource["url"])
    prom_port = config["services"]["prometheus"]["ports"][0]["target"]
    assert url.hostname == "prometheus" and url.port == int(prom_port)
    provider = yaml.safe_load((DOCKER_DIR / "grafana/provisioning/dashboards/pcclip.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert (DOCKER_DIR / "grafana/dashboards/pcclip.json").is_file()


def test_every_named_volume_is_declared_and_every_bind_source_exists(config):
    declared = set(config["volumes"])
    used = set()
    for name, service in config["services"].items():
        for v in mounts(service).values():
            if v["type"] == "volume":
                used.add(v["source"])
            elif v["target"] != "/data":  # the data root is the user's (PCCLIP_DATA_DIR)
                assert (REPO_ROOT / v["source"]).exists(), (name, v["source"])
        if "build" in service:
            assert (REPO_ROOT / service["build"]["dockerfile"]).is_file(), name
    assert used <= declared and {"models", "redis-data", "prometheus-data", "grafana-data"} <= used
