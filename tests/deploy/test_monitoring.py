"""Prometheus scrapes the API as docker/prometheus/prometheus.yml says; Grafana's panels query real metrics.

A real Prometheus server (Debian's package) runs on loopback with the repository's scrape config,
only its DNS discovery of `api` replaced by the loopback address of the API started from the
slim image's command.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import urllib.parse

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.conftest import DOCKER_DIR, free_port, http_get, stop_process, wait_until

PROM_CONFIG = DOCKER_DIR / "prometheus/prometheus.yml"
DASHBOARD = DOCKER_DIR / "grafana/dashboards/pcclip.json"
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum"), "info": ("_info",)}


def test_promtool_accepts_the_config():
    exe = shutil.which("promtool") or pytest.fail("promtool is not installed (Debian package prometheus)")
    result = subprocess.run([exe, "check", "config", str(PROM_CONFIG)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def loopback_scrape_config(api_port: int, prom_port: int) -> dict:
    """The repository's config with each DNS discovery replaced by loopback targets and a 1 s interval."""
    config = yaml.safe_load(PROM_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    for job in config["scrape_configs"]:
        job["scrape_interval"] = "1s"
        for sd in job.pop("dns_sd_configs", []):
            job.setdefault("static_configs", []).append({"targets": [f"127.0.0.1:{api_port}" for _ in sd["names"]]})
        for static in job.get("static_configs", []):
            static["targets"] = [t.replace("localhost:9090", f"127.0.0.1:{prom_port}") for t in static["targets"]]
    return config


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, api_from_image):
    exe = shutil.which("prometheus") or pytest.fail("prometheus is not installed (Debian package prometheus)")
    tmp = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config_path = tmp / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(loopback_scrape_config(api_from_image.port, port)))
    log = open(tmp / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [exe, f"--config.file={config_path}", f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is None and http_get(base + "/-/ready", timeout=2)[0] == 200, 60, "Prometheus ready")
        yield base
    finally:
        stop_process(proc)
        log.close()


def http_post_json(url: str, payload: dict) -> tuple[int, bytes]:
    import httpx

    r = httpx.post(url, json=payload, timeout=30)
    return r.status_code, r.content


def query(base: str, promql: str) -> dict:
    status, body = http_get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "success", (promql, answer)
    return answer["data"]


@pytest.fixture(scope="module")
def traffic(api_from_image, cub_photos):
    """Requests that touch every part the dashboard shows: embeddings (both towers, text cache), stores, classify."""
    import httpx

    image = base64.b64encode(cub_photos[0].read_bytes()).decode()
    with httpx.Client(base_url=api_from_image.base_url, timeout=60) as client:
        for _ in range(2):
            assert client.post("/v1/embed", json={"texts": ["a small bird", "a red bird"], "images": [image]}).status_code == 200
        store = {"classes": ["cardinal", "blue jay"], "templates": ["a photo of a {}."]}
        assert client.put("/v1/stores/deploy-test", json=store).status_code in (200, 201)
        for _ in range(2):
            r = client.post("/v1/classify", json={"images": [image], "store": "deploy-test"})
            assert r.status_code == 200, r.text
        assert client.get("/v1/nowhere").status_code == 404
    return api_from_image


def test_prometheus_scrapes_the_api(prometheus, traffic):
    def target_up():
        status, body = http_get(prometheus + "/api/v1/targets")
        active = json.loads(body)["data"]["activeTargets"]
        api = [t for t in active if t["labels"]["job"] == "pcclip-api"]
        return api and all(t["health"] == "up" for t in api) and api

    (target,) = wait_until(target_up, 60, "the pcclip-api target up")
    assert target["scrapeUrl"] == f"{traffic.base_url}/metrics"

    def request_series():
        result = query(prometheus, 'pcclip_requests_total{route="/v1/embed",status="200"}')["result"]
        return result and float(result[0]["value"][1]) >= 2 and result

    series = wait_until(request_series, 60, "a pcclip_requests_total series")
    assert series[0]["metric"]["job"] == "pcclip-api"


def live_metric_names(base_url: str) -> set[str]:
    status, body = http_get(base_url + "/metrics")
    assert status == 200
    names = set()
    for family in text_string_to_metric_families(body.decode()):
        # a labelled metric with no series yet still declares its family (# TYPE); its sample names follow
        names.add(family.name)
        names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_dashboard_panels_query_metrics_the_service_exports(prometheus, traffic):
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("request rate", "latency", "batch size", "queue wait", "store cache", "redis up"):
        assert topic in titles, topic
    exported = live_metric_names(traffic.base_url)
    for panel in panels:
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            names = set(re.findall(r"\bpcclip_[a-z_]+\b", expr))
            assert names, (panel["title"], expr)
            assert names <= exported, (panel["title"], names - exported)
            # the real Prometheus accepts the query (Grafana's $__rate_interval is a 4 x scrape interval)
            query(prometheus, expr.replace("$__rate_interval", "20s"))


def test_request_rate_panel_shows_the_traffic(prometheus, traffic):
    panel = next(p for p in json.loads(DASHBOARD.read_text())["panels"] if p["title"].lower().startswith("request rate"))
    expr = panel["targets"][0]["expr"].replace("$__rate_interval", "20s")

    def embed_rate():
        # requests keep coming while Prometheus scrapes (a rate needs the counter to move between scrapes)
        status, _ = http_post_json(traffic.base_url + "/v1/embed", {"texts": ["a bird with a long tail"]})
        assert status == 200
        return [r for r in query(prometheus, expr)["result"] if r["metric"].get("route") == "/v1/embed" and float(r["value"][1]) > 0]

    wait_until(embed_rate, 60, "a non-zero request rate of /v1/embed", interval=1)
