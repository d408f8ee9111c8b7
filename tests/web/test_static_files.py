"""The chat page's files over HTTP (no browser): served at `/` and `/static/`, public even with
API keys on, self-contained (nothing fetched from another host) and consistent with each other
(index.html names the content hashes of the built app.js and app.css)."""

from __future__ import annotations

import hashlib
import re

import httpx
import pytest

from martlet_molt.web import STATIC_DIR
from tests.conftest import GatewayFactory

pytestmark = pytest.mark.timeout(20)

ASSET = re.compile(r'static/(app\.(?:js|css))\?v=([0-9a-f]{12})"')


def test_the_built_files_are_committed_and_consistent() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    assets = dict(ASSET.findall(html))
    assert set(assets) == {"app.js", "app.css"}
    for name, version in assets.items():
        digest = hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()
        assert digest[:12] == version, f"{name} changed without index.html: rebuild web/"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "no other host at run time"


def test_the_page_is_served_and_public_with_keys_on(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(api_keys="k1")
    with httpx.Client(base_url=gateway.url, timeout=5.0) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-cache"
        assert "Content-Security-Policy" in page.text
        for name, version in ASSET.findall(page.text):
            asset = client.get(f"/static/{name}", params={"v": version})
            assert asset.status_code == 200, name
            assert hashlib.sha256(asset.content).hexdigest()[:12] == version
            kind = "javascript" if name.endswith(".js") else "text/css"
            assert kind in asset.headers["content-type"]
        assert client.get("/static/missing.js").status_code == 404
        assert client.get("/sessions").status_code == 401  # the API itself stays guarded
        assert client.get("/sessions", headers={"Authorization": "Bearer k1"}).status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
        assert "/" not in paths
