"""Tools from installed packages, through the `martlet_molt.tools` entry points: a package
is installed here as Python finds one (a module and its `.dist-info` on the path)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from martlet_molt.testing import FakeUpstream, Script
from tests.conftest import GatewayFactory
from tests.sse_client import read_sse

PLUGIN = '''
async def shout(text: str) -> str:
    """Say it louder."""
    return text.upper() + "!"
'''


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution `loud-tools` whose entry point `shout` is an async function."""
    (tmp_path / "loud_tools.py").write_text(PLUGIN)
    info = tmp_path / "loud_tools-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: loud-tools\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[martlet_molt.tools]\nshout = loud_tools:shout\n")
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.asyncio
@pytest.mark.usefixtures("installed_plugin")
async def test_an_entry_point_plugin_is_offered_and_called(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(tools="shout,calculator")
    upstream.scripts_by_model.pop(model, None)
    upstream.enqueue(
        Script(tool_calls=[{"name": "shout", "arguments": {"text": "hi"}}]),
        Script(tokens=["ok"]),
    )
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        stream = await read_sse(
            client, "POST", "/chat/stream?format=json", json_body={"message": "shout"}
        )
        listing = (await client.get("/tools")).json()["tools"]
    results = [e.json() for e in stream.events if e.event == "tool_result"]
    assert [(r["content"], r["status"]) for r in results] == [("HI!", "done")]
    offered = {t["function"]["name"]: t["function"] for t in upstream.requests[-2]["tools"]}
    assert offered["shout"]["description"] == "Say it louder."
    assert offered["shout"]["parameters"]["properties"]["text"]["type"] == "string"
    sources = {t["name"]: t["source"] for t in listing}
    assert sources == {"shout": "plugin", "calculator": "builtin"}
