"""Tools from real MCP servers (`mcp_test_server.py`, over stdio and over streamable HTTP),
called by runs of a real gateway whose model is the fake upstream's scripted tool calls."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from martlet_molt.core.tool_rounds import UNANSWERED
from martlet_molt.testing import FakeUpstream, Script
from tests.conftest import GatewayFactory
from tests.gateway.test_runs_api import wait_for_run
from tests.gateway_server import GatewayServer
from tests.sse_client import read_sse

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(autouse=True)
def unused_scripts_dropped(upstream: FakeUpstream) -> Iterator[None]:
    """A run cancelled mid-round leaves its answer queued: the next test must not get it."""
    yield
    upstream.clear_queue()


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    """Where the test server writes what it saw."""
    path = tmp_path / "journal.txt"
    path.touch()
    return path


@pytest.fixture
def http_server(journal: Path) -> Iterator[str]:
    """The test server over streamable HTTP, in its own process; its URL."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.tools.mcp_test_server", "http", str(port)],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "MCP_TEST_JOURNAL": str(journal), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert process.poll() is None, "the MCP server exited"
            assert time.monotonic() < deadline, "the MCP server did not listen"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(TIMEOUT)


def _stdio(journal: Path) -> dict[str, Any]:
    return {
        "command": sys.executable,
        "args": ["-m", "tests.tools.mcp_test_server", "stdio"],
        "cwd": str(ROOT),
        "env": {"MCP_TEST_JOURNAL": str(journal), "PYTHONPATH": str(ROOT)},
    }


def _gateway(
    make_gateway: GatewayFactory, tmp_path: Path, servers: dict[str, Any], **settings: Any
) -> GatewayServer:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": servers}))
    return make_gateway(mcp_config=str(config), **settings)


def _call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"name": tool, "arguments": arguments}


def _lines(journal: Path) -> list[str]:
    return journal.read_text().splitlines()


async def _ask(
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


def _results(events: list[Any]) -> dict[str, dict[str, Any]]:
    calls = {e.json()["id"]: e.json()["name"] for e in events if e.event == "tool_call"}
    return {calls[e.json()["tool_call_id"]]: e.json() for e in events if e.event == "tool_result"}


async def _wait_for_tool(gateway: GatewayServer, name: str) -> None:
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


async def _wait_for_journal(journal: Path, line: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while True:
            if line in _lines(journal):
                return
            await asyncio.sleep(0.05)


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_a_call_its_result_and_the_final_answer(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    model: str,
    tmp_path: Path,
    journal: Path,
    transport: str,
    request: pytest.FixtureRequest,
) -> None:
    server = (
        _stdio(journal) if transport == "stdio" else {"url": request.getfixturevalue("http_server")}
    )
    gateway = _gateway(make_gateway, tmp_path, {"calc": {**server, "deny": ["die"]}})
    events, run, session = await _ask(gateway, upstream, model, _call("calc__add", a=2, b=3))
    result = _results(events)["calc__add"]
    assert (result["content"], result["status"]) == ("5", "done")
    assert run["status"] == "completed"
    assert run["content"] == "done"
    roles = [(m["role"], m["content"]) for m in session["messages"]]
    assert roles == [("user", "use tools"), ("assistant", ""), ("tool", "5"), ("assistant", "done")]
    saved = session["messages"][2]
    assert (saved["tool_status"], saved["duration_ms"]) == ("done", result["duration_ms"])
    offered = [t["function"]["name"] for t in upstream.requests[-2]["tools"]]
    assert "calc__add" in offered
    assert "calc__die" not in offered  # the deny list
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT) as client:
        listing = (await client.get("/tools")).json()["tools"]
        metrics = (await client.get("/metrics")).text
    entry = next(t for t in listing if t["name"] == "calc__add")
    assert 'martlet_tool_calls_total{status="done",tool="calc__add"} 1.0' in metrics
    assert 'martlet_tool_call_seconds_count{tool="calc__add"} 1.0' in metrics
    assert (entry["source"], entry["state"]) == ("mcp:calc", "available")


@pytest.mark.asyncio
async def test_two_calls_in_one_round_run_at_the_same_time(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, tmp_path: Path, journal: Path
) -> None:
    gateway = _gateway(make_gateway, tmp_path, {"t": _stdio(journal)})
    events, run, _ = await _ask(
        gateway, upstream, model, _call("t__together", name="a"), _call("t__together", name="b")
    )
    contents = sorted(e.json()["content"] for e in events if e.event == "tool_result")
    assert contents == ["a: together", "b: together"]
    assert run["status"] == "completed"


@pytest.mark.asyncio
async def test_a_slow_tool_times_out_and_the_server_is_told(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, tmp_path: Path, journal: Path
) -> None:
    gateway = _gateway(make_gateway, tmp_path, {"t": _stdio(journal)}, tool_timeout_seconds=0.5)
    events, run, session = await _ask(gateway, upstream, model, _call("t__slow", seconds=30))
    result = _results(events)["t__slow"]
    assert result["status"] == "failed"
    assert result["content"] == "error: tool timed out after 0.5 s"
    assert run["status"] == "completed"  # the model read the error and answered
    assert ("tool", "error: tool timed out after 0.5 s") in [
        (m["role"], m["content"]) for m in session["messages"]
    ]
    await _wait_for_journal(journal, "slow cancelled")


@pytest.mark.asyncio
async def test_a_tool_that_raises_gives_the_model_its_error(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, tmp_path: Path, journal: Path
) -> None:
    gateway = _gateway(make_gateway, tmp_path, {"t": _stdio(journal)})
    events, run, _ = await _ask(gateway, upstream, model, _call("t__boom"))
    result = _results(events)["t__boom"]
    assert result["status"] == "failed"
    assert result["content"].startswith("error: ")
    assert run["status"] == "completed"


@pytest.mark.asyncio
async def test_a_server_killed_mid_call_is_restarted(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, tmp_path: Path, journal: Path
) -> None:
    gateway = _gateway(make_gateway, tmp_path, {"t": _stdio(journal)})
    events, run, _ = await _ask(gateway, upstream, model, _call("t__die"))
    result = _results(events)["t__die"]
    assert result["status"] == "failed"
    assert "MCP server t" in result["content"]
    assert run["status"] == "completed"
    dead = next(line for line in _lines(journal) if line.startswith("die "))
    await _wait_for_tool(gateway, "t__pid")  # the server is back
    events, run, _ = await _ask(gateway, upstream, model, _call("t__pid"))
    assert _results(events)["t__pid"]["status"] == "done"
    assert f"die {_results(events)['t__pid']['content']}" != dead  # a new process answered


@pytest.mark.asyncio
async def test_a_server_that_never_starts_leaves_the_gateway_up(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, tmp_path: Path
) -> None:
    gateway = _gateway(
        make_gateway, tmp_path, {"ghost": {"command": str(tmp_path / "no-such-server")}}
    )
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT) as client:
        listing = (await client.get("/tools")).json()["tools"]
        ready = (await client.get("/readyz")).json()
    assert listing == [
        {
            "name": None,
            "description": "",
            "source": "mcp:ghost",
            "state": "unavailable",
            "error": listing[0]["error"],
        }
    ]
    assert listing[0]["error"]
    assert ready["unavailable_tool_servers"] == ["ghost"]
    upstream.scripts_by_model[model] = Script(tokens=["still ", "here"])
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT) as client:
        reply = (await client.post("/chat", json={"message": "hi"})).json()
    assert reply["reply"] == "still here"
    assert "tools" not in upstream.requests[-1]


@pytest.mark.asyncio
async def test_cancel_during_a_tool_call_cancels_it_on_the_server(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, tmp_path: Path, journal: Path
) -> None:
    gateway = _gateway(make_gateway, tmp_path, {"t": _stdio(journal)})
    upstream.scripts_by_model.pop(model, None)
    upstream.enqueue(Script(tool_calls=[_call("t__slow", seconds=30)]), Script(tokens=["x"]))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT) as client:
        async with client.stream("POST", "/chat/stream", json={"message": "wait"}) as started:
            run_id, session_id = started.headers["x-run-id"], started.headers["x-session-id"]
        await _wait_for_journal(journal, "slow started")
        cancelled = (await client.post(f"/runs/{run_id}/cancel")).json()
        session = (await client.get(f"/sessions/{session_id}")).json()
    assert cancelled["status"] == "cancelled"
    await _wait_for_journal(journal, "slow cancelled")
    saved = [(m["role"], m["content"]) for m in session["messages"]]
    assert saved[:3] == [("user", "wait"), ("assistant", ""), ("tool", UNANSWERED)]
    cut = session["messages"][2]
    assert (cut["tool_status"], cut["duration_ms"]) == ("failed", None)
    assert session["messages"][1]["tool_calls"][0]["function"]["name"] == "t__slow"


@pytest.mark.asyncio
async def test_a_reader_that_drops_mid_tool_round_resumes_with_every_event_once(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, tmp_path: Path, journal: Path
) -> None:
    gateway = _gateway(make_gateway, tmp_path, {"t": _stdio(journal)})
    upstream.scripts_by_model.pop(model, None)
    upstream.enqueue(
        Script(tool_calls=[_call("t__slow", seconds=1), _call("t__add", a=1, b=2)]),
        Script(tokens=["all ", "done"]),
    )
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT) as client:
        first = await read_sse(
            client, "POST", "/chat/stream?format=json", json_body={"message": "go"}, stop_after=2
        )
        run_id = first.headers["x-run-id"]
        assert [e.event for e in first.events] == ["tool_call", "tool_call"]
        await _wait_for_journal(journal, "slow started")  # dropped while the tool runs
        rest = await read_sse(
            client,
            "GET",
            f"/runs/{run_id}/stream?format=json",
            headers={"Last-Event-ID": first.events[-1].id or ""},
        )
        whole = await read_sse(client, "GET", f"/runs/{run_id}/stream?format=json")
    seen = first.events + rest.events
    assert [int(e.id or 0) for e in seen] == list(range(1, len(seen) + 1))
    assert [(e.id, e.data) for e in seen] == [(e.id, e.data) for e in whole.events]
    results = _results(seen)
    assert results["t__add"]["content"] == "3"
    assert results["t__slow"]["content"] == "waited 1.0 s"
    assert seen[-1].event == "done"


@pytest.mark.asyncio
async def test_a_changed_tool_list_is_offered_on_the_next_round(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, tmp_path: Path, journal: Path
) -> None:
    gateway = _gateway(make_gateway, tmp_path, {"t": _stdio(journal)})
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT) as client:
        before = {t["name"] for t in (await client.get("/tools")).json()["tools"]}
    assert "t__extra" not in before
    events, _, _ = await _ask(gateway, upstream, model, _call("t__grow"))
    assert _results(events)["t__grow"]["content"] == "grown"
    await _wait_for_tool(gateway, "t__extra")
    events, _, _ = await _ask(gateway, upstream, model, _call("t__extra"))
    assert _results(events)["t__extra"]["content"] == "extra here"
