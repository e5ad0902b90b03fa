"""/docs and /redoc work air-gapped: every asset they load is served by the app itself."""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest

from tests.service.conftest import service_client


URL_ATTRIBUTE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


def _referenced_urls(html: str) -> list[str]:
    """Every src=, href= and Swagger `url:` the page names."""
    return [a or b for a, b in URL_ATTRIBUTE.findall(html)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_reference_no_external_host(client, page):
    r = client.get(page)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    html = r.text
    assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.IGNORECASE), html
    urls = _referenced_urls(html)
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts, html  # the page loads its UI from the app
    for url in urls:
        assert not urlparse(url).netloc, url
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, (url, asset.status_code)


def test_docs_assets_need_no_api_key(encoder, redis_url):
    with service_client(encoder, redis_url, api_keys=["k"]) as c:
        assert c.post("/v1/embed", json={"texts": ["x"]}).status_code == 401
        html = c.get("/docs").text
        for url in _referenced_urls(html):
            assert c.get(url).status_code == 200, url
