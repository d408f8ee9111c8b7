"""A gateway process killed (SIGKILL) in the middle of a tool call: on restart its run is
`interrupted`, and the session keeps the calls made so far, with the results that came back
before the crash and an error result for the call that never did."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from martlet_molt.core.tool_rounds import UNANSWERED
from martlet_molt.testing import FakeUpstream, Script
from tests.process_gateway import ProcessGateways, process_gateways
from tests.sse_client import read_sse
from tests.tools.mcp_runs import journal_lines, stdio_server

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0


@pytest.fixture
def processes(upstream: FakeUpstream, model: str, tmp_path: Path) -> Iterator[ProcessGateways]:
    with process_gateways(upstream, model, tmp_path) as factory:
        yield factory


def _process_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie nobody reaped counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


async def _checkpointed_results(gateway: Any, run_id: str, count: int) -> None:
    """Wait until the run's checkpoints on disk hold `count` tool results."""
    async with asyncio.timeout(WAIT):
        while True:
            rows = gateway.query("SELECT events FROM run_parts WHERE run_id = ?", (run_id,))
            events = [e for (part,) in rows for e in json.loads(part) if isinstance(e, dict)]
            if sum(1 for e in events if e.get("kind") == "tool_result") >= count:
                return
            await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_a_crash_mid_call_leaves_the_run_interrupted_with_its_calls_saved(
    processes: ProcessGateways,
    upstream: FakeUpstream,
    model: str,
    tmp_path: Path,
    journal: Path,
) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"t": stdio_server(journal)}}))
    upstream.scripts_by_model.pop(model, None)
    upstream.enqueue(
        Script(tool_calls=[{"name": "t__pid", "arguments": {}, "id": "call_pid"}]),
        Script(
            tokens=["Still ", "waiting."],
            tool_calls=[
                {"name": "t__slow", "arguments": {"seconds": 30}, "id": "call_slow"},
                {"name": "t__add", "arguments": {"a": 1, "b": 1}, "id": "call_add"},
            ],
        ),
    )
    gateway = processes(MARTLET_CHECKPOINT_SECONDS="0.1", MARTLET_MCP_CONFIG=str(config))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=WAIT) as client:
        stream = await read_sse(
            client,
            "POST",
            "/chat/stream?format=json",
            json_body={"message": "wait for me", "session_id": "tools-crash"},
            stop_after=4,  # pid's call and result, slow's and add's calls
        )
        run_id = stream.headers["x-run-id"]
    await _checkpointed_results(gateway, run_id, count=2)  # pid's, then add's
    server_pid = int(next(e.json() for e in stream.events if e.event == "tool_result")["content"])
    assert "slow started" in journal_lines(journal)

    assert gateway.kill() == -signal.SIGKILL
    async with asyncio.timeout(WAIT):  # the stdio server sees its input close and exits
        while True:
            if _process_gone(server_pid):
                break
            await asyncio.sleep(0.05)

    gateway.restart()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=WAIT) as client:
        run = (await client.get(f"/runs/{run_id}")).json()
        session = (await client.get("/sessions/tools-crash")).json()
    assert (run["status"], run["error"]) == ("interrupted", "interrupted")
    assert run["content"] == "Still waiting."
    saved = [
        (m["role"], m["content"], m["tool_call_id"], m["tool_status"]) for m in session["messages"]
    ]
    assert saved == [
        ("user", "wait for me", None, None),
        ("assistant", "", None, None),
        ("tool", str(server_pid), "call_pid", "done"),
        ("assistant", "Still waiting.", None, None),
        ("tool", UNANSWERED, "call_slow", "failed"),
        ("tool", "2", "call_add", "done"),
        ("assistant", "", None, None),
    ]
    calls = [
        [call["function"]["name"] for call in m["tool_calls"] or []] for m in session["messages"]
    ]
    assert calls == [[], ["t__pid"], [], ["t__slow", "t__add"], [], [], []]
    assert session["messages"][-1]["status"] == "interrupted"
    assert session["messages"][5]["duration_ms"] is not None
    assert session["active_run_id"] is None
