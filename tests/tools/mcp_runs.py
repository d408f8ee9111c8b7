"""Helpers of the tool tests: the test MCP server's config entries, a gateway configured
with them, and one run whose model calls tools (scripted on the fake upstream)."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path
from typing import Any

import httpx

from martlet_molt.testing import FakeUpstream, Script
from tests.conftest import GatewayFactory
from tests.gateway.test_runs_api import wait_for_run
from tests.gateway_server import GatewayServer
from tests.sse_client import read_sse

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stdio_server(journal: Path) -> dict[str, Any]:
    """The test server's config entry, over stdio, journaling to `journal`."""
    return {
        "command": sys.executable,
        "args": ["-m", "tests.tools.mcp_test_server", "stdio"],
        "cwd": str(ROOT),
        "env": {"MCP_TEST_JOURNAL": str(journal), "PYTHONPATH": str(ROOT)},
    }


def gateway_with(
    make_gateway: GatewayFactory, tmp_path: Path, servers: dict[str, Any], **settings: Any
) -> GatewayServer:
    """A gateway whose MCP config file holds these servers."""
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": servers}))
    return make_gateway(mcp_config=str(config), **settings)


def tool_call(tool: str, **arguments: Any) -> dict[str, Any]:
    """A call the fake upstream makes the model ask for."""
    return {"name": tool, "arguments": arguments}


def journal_lines(journal: Path) -> list[str]:
    """What the test server journaled so far."""
    return journal.read_text().splitlines()


async def ask(
    gateway: GatewayServer, upstream: FakeUpstream, model: str, *calls: dict[str, Any]
) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """One run: the model calls these tools in one round, then answers `done`. Its events,
    its final state, and its session."""
    upstream.scripts_by_model.pop(model, None)
    upstream.enqueue(Script(tool_calls=list(calls)), Script(tokens=["done"]))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT) as client:
        stream = await read_sse(
            client, "POST", "/chat/stream?format=json", json_body={"message": "use tools"}
        )
        assert stream.status_code == 200
        run = await wait_for_run(client, stream.headers["x-run-id"])
        session = (await client.get(f"/sessions/{stream.headers['x-session-id']}")).json()
    return stream.events, run, session


def results_by_tool(events: list[Any]) -> dict[str, dict[str, Any]]:
    """Each `tool_result` event's data, by the name of the tool called."""
    calls = {e.json()["id"]: e.json()["name"] for e in events if e.event == "tool_call"}
    return {calls[e.json()["tool_call_id"]]: e.json() for e in events if e.event == "tool_result"}


async def wait_for_tool(gateway: GatewayServer, name: str) -> None:
    """Poll `GET /tools` (bounded) until the tool is offered."""
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT) as client,
        asyncio.timeout(TIMEOUT),
    ):
        while True:
            listing = (await client.get("/tools")).json()["tools"]
            if any(tool["name"] == name for tool in listing):
                return
            await asyncio.sleep(0.05)


async def wait_for_journal(journal: Path, line: str) -> None:
    """Wait (bounded) until the test server journals `line`."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            if line in journal_lines(journal):
                return
            await asyncio.sleep(0.05)
