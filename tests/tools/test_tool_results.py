"""What the model is given back, and what is saved, when a tool's result is too long, when the
tool raises, and when the model calls a tool nobody offers: the same text in all three places
(the log, the next upstream request, the session)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from martlet_molt.testing import FakeUpstream
from tests.conftest import GatewayFactory
from tests.tools.mcp_runs import ask, gateway_with, results_by_tool, stdio_server, tool_call


def _given_back(upstream: FakeUpstream) -> list[str]:
    """The tool results the model received in the last upstream request."""
    messages: list[dict[str, Any]] = upstream.requests[-1]["messages"]
    return [m["content"] for m in messages if m["role"] == "tool"]


def _saved(session: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(m["content"], m["tool_status"]) for m in session["messages"] if m["role"] == "tool"]


@pytest.mark.asyncio
async def test_a_long_result_is_cut_at_the_cap_and_says_so(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, tmp_path: Path, journal: Path
) -> None:
    gateway = gateway_with(
        make_gateway, tmp_path, {"t": stdio_server(journal)}, tool_result_max_chars=100
    )
    events, run, session = await ask(gateway, upstream, model, tool_call("t__big", size=1000))
    expected = "x" * 100 + "\n[truncated: 900 more characters]"
    result = results_by_tool(events)["t__big"]
    assert (result["content"], result["status"]) == (expected, "done")
    assert _given_back(upstream) == [expected]
    assert _saved(session) == [(expected, "done")]
    assert run["status"] == "completed"


@pytest.mark.asyncio
async def test_a_tool_that_raises_is_an_error_the_model_reads(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, tmp_path: Path, journal: Path
) -> None:
    gateway = gateway_with(make_gateway, tmp_path, {"t": stdio_server(journal)})
    events, run, session = await ask(gateway, upstream, model, tool_call("t__boom"))
    result = results_by_tool(events)["t__boom"]
    assert result["status"] == "failed"
    assert result["content"].startswith("error: ")  # the server's own words follow
    assert _given_back(upstream) == [result["content"]]
    assert _saved(session) == [(result["content"], "failed")]
    assert (run["status"], run["content"]) == ("completed", "done")


@pytest.mark.asyncio
async def test_a_call_of_a_tool_nobody_offers_is_an_error_the_model_reads(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, tmp_path: Path, journal: Path
) -> None:
    gateway = gateway_with(
        make_gateway, tmp_path, {"t": {**stdio_server(journal), "deny": ["die"]}}
    )
    events, run, session = await ask(gateway, upstream, model, tool_call("t__die"))
    result = results_by_tool(events)["t__die"]
    assert (result["content"], result["status"]) == ("error: unknown tool t__die", "failed")
    assert _given_back(upstream) == ["error: unknown tool t__die"]
    assert _saved(session) == [("error: unknown tool t__die", "failed")]
    assert run["status"] == "completed"
