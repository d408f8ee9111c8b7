"""Tools from real MCP servers (`mcp_test_server.py`, over stdio and over streamable HTTP),
called by runs of a real gateway whose model is the fake upstream's scripted tool calls."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from martlet_molt.core.tool_rounds import UNANSWERED
from martlet_molt.testing import FakeUpstream, Script
from tests.conftest import GatewayFactory
from tests.sse_client import read_sse
from tests.tools.mcp_runs import (
    TIMEOUT,
    ask,
    gateway_with,
    journal_lines,
    results_by_tool,
    stdio_server,
    tool_call,
    wait_for_journal,
    wait_for_tool,
)


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
        stdio_server(journal)
        if transport == "stdio"
        else {"url": request.getfixturevalue("http_server")}
    )
    gateway = gateway_with(make_gateway, tmp_path, {"calc": {**server, "deny": ["die"]}})
    events, run, session = await ask(gateway, upstream, model, tool_call("calc__add", a=2, b=3))
    result = results_by_tool(events)["calc__add"]
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
    gateway = gateway_with(make_gateway, tmp_path, {"t": stdio_server(journal)})
    events, run, _ = await ask(
        gateway,
        upstream,
        model,
        tool_call("t__together", name="a"),
        tool_call("t__together", name="b"),
    )
    contents = sorted(e.json()["content"] for e in events if e.event == "tool_result")
    assert contents == ["a: together", "b: together"]
    assert run["status"] == "completed"


@pytest.mark.asyncio
async def test_a_slow_tool_times_out_and_the_server_is_told(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, tmp_path: Path, journal: Path
) -> None:
    gateway = gateway_with(
        make_gateway, tmp_path, {"t": stdio_server(journal)}, tool_timeout_seconds=0.5
    )
    events, run, session = await ask(gateway, upstream, model, tool_call("t__slow", seconds=30))
    result = results_by_tool(events)["t__slow"]
    assert result["status"] == "failed"
    assert result["content"] == "error: tool timed out after 0.5 s"
    assert run["status"] == "completed"  # the model read the error and answered
    assert ("tool", "error: tool timed out after 0.5 s") in [
        (m["role"], m["content"]) for m in session["messages"]
    ]
    await wait_for_journal(journal, "slow cancelled")


@pytest.mark.asyncio
async def test_a_server_killed_mid_call_is_restarted(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, tmp_path: Path, journal: Path
) -> None:
    gateway = gateway_with(make_gateway, tmp_path, {"t": stdio_server(journal)})
    events, run, _ = await ask(gateway, upstream, model, tool_call("t__die"))
    result = results_by_tool(events)["t__die"]
    assert result["status"] == "failed"
    assert "MCP server t" in result["content"]
    assert run["status"] == "completed"
    dead = next(line for line in journal_lines(journal) if line.startswith("die "))
    await wait_for_tool(gateway, "t__pid")  # the server is back
    events, run, _ = await ask(gateway, upstream, model, tool_call("t__pid"))
    assert results_by_tool(events)["t__pid"]["status"] == "done"
    assert f"die {results_by_tool(events)['t__pid']['content']}" != dead  # a new process answered


@pytest.mark.asyncio
async def test_a_server_that_never_starts_leaves_the_gateway_up(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, tmp_path: Path
) -> None:
    gateway = gateway_with(
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
    gateway = gateway_with(make_gateway, tmp_path, {"t": stdio_server(journal)})
    upstream.scripts_by_model.pop(model, None)
    upstream.enqueue(Script(tool_calls=[tool_call("t__slow", seconds=30)]), Script(tokens=["x"]))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT) as client:
        async with client.stream("POST", "/chat/stream", json={"message": "wait"}) as started:
            run_id, session_id = started.headers["x-run-id"], started.headers["x-session-id"]
        await wait_for_journal(journal, "slow started")
        cancelled = (await client.post(f"/runs/{run_id}/cancel")).json()
        session = (await client.get(f"/sessions/{session_id}")).json()
    assert cancelled["status"] == "cancelled"
    await wait_for_journal(journal, "slow cancelled")
    saved = [(m["role"], m["content"]) for m in session["messages"]]
    assert saved[:3] == [("user", "wait"), ("assistant", ""), ("tool", UNANSWERED)]
    cut = session["messages"][2]
    assert (cut["tool_status"], cut["duration_ms"]) == ("failed", None)
    assert session["messages"][1]["tool_calls"][0]["function"]["name"] == "t__slow"


@pytest.mark.asyncio
async def test_a_reader_that_drops_mid_tool_round_resumes_with_every_event_once(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, tmp_path: Path, journal: Path
) -> None:
    gateway = gateway_with(make_gateway, tmp_path, {"t": stdio_server(journal)})
    upstream.scripts_by_model.pop(model, None)
    upstream.enqueue(
        Script(tool_calls=[tool_call("t__slow", seconds=1), tool_call("t__add", a=1, b=2)]),
        Script(tokens=["all ", "done"]),
    )
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT) as client:
        first = await read_sse(
            client, "POST", "/chat/stream?format=json", json_body={"message": "go"}, stop_after=2
        )
        run_id = first.headers["x-run-id"]
        assert [e.event for e in first.events] == ["tool_call", "tool_call"]
        await wait_for_journal(journal, "slow started")  # dropped while the tool runs
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
    results = results_by_tool(seen)
    assert results["t__add"]["content"] == "3"
    assert results["t__slow"]["content"] == "waited 1.0 s"
    assert seen[-1].event == "done"


@pytest.mark.asyncio
async def test_a_changed_tool_list_is_offered_on_the_next_round(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, tmp_path: Path, journal: Path
) -> None:
    gateway = gateway_with(make_gateway, tmp_path, {"t": stdio_server(journal)})
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT) as client:
        before = {t["name"] for t in (await client.get("/tools")).json()["tools"]}
    assert "t__extra" not in before
    events, _, _ = await ask(gateway, upstream, model, tool_call("t__grow"))
    assert results_by_tool(events)["t__grow"]["content"] == "grown"
    await wait_for_tool(gateway, "t__extra")
    events, _, _ = await ask(gateway, upstream, model, tool_call("t__extra"))
    assert results_by_tool(events)["t__extra"]["content"] == "extra here"
