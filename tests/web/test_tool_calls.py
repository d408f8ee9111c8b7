"""Tool calls on the chat page: each call is one collapsed block (name, short arguments,
running… / done / failed, duration) that opens on the full arguments and result. The same
blocks come from the live stream, from a replay after a reload and from the saved session,
never twice; results are matched to their calls by id, in whatever order they come."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from martlet_molt.testing import FakeUpstream, Script
from tests.conftest import GatewayFactory
from tests.gateway_server import GatewayServer
from tests.web.conftest import IN_CI
from tests.web.test_chat_page import (
    expect_final,
    reply,
    reply_text,
    saved_session,
    send,
    session_of,
    wait_seq,
    wait_until,
)

try:
    from playwright.sync_api import Locator, Page, Route, expect
except ImportError:
    if IN_CI:
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)

pytestmark = pytest.mark.timeout(30)

DURATION = re.compile(r"^(\d+ ms|\d+\.\d s)$")
ANSWER = [f"a{i} " for i in range(40)]
"""The reply after the tools: 40 chunks, 50 ms apart, so the page can be reloaded mid-reply."""


def tool_block(page: Page, call_id: str) -> Locator:
    return page.locator(f'details.tool[data-call-id="{call_id}"]')


def expect_block(
    block: Locator,
    *,
    name: str,
    args: str,
    state: str,
    result: str,
    duration: str | re.Pattern[str] | None,
) -> None:
    """The block's summary, then, opened from the keyboard, its result."""
    expect(block).to_have_count(1)
    expect(block).to_have_attribute("data-state", state)
    expect(block.locator(".tool-name")).to_have_text(name)
    expect(block.locator(".tool-args")).to_have_text(f"({args})")
    expect(block.locator(".tool-state")).to_have_text(state)
    expect(block.locator(".tool-time")).to_have_text(duration if duration is not None else "")
    expect(block.locator(".tool-result")).to_be_hidden()  # collapsed
    block.locator("summary").focus()
    block.locator("summary").press("Enter")
    expect(block.locator(".tool-result")).to_be_visible()
    expect(block.locator(".tool-result")).to_have_text(result)
    block.locator("summary").press("Enter")
    expect(block.locator(".tool-result")).to_be_hidden()


def tool_results(gateway: GatewayServer, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's `tool_result` events by call id, read from its (finished) stream."""
    with httpx.Client(base_url=gateway.url, timeout=5.0) as client:
        body = client.get(f"/runs/{run_id}/stream", params={"format": "json"}).text
    results: dict[str, dict[str, Any]] = {}
    for frame in body.split("\n\n"):
        lines = frame.splitlines()
        if "event: tool_result" in lines:
            data = json.loads(next(line[6:] for line in lines if line.startswith("data: ")))
            results[data["tool_call_id"]] = data
    return results


def test_a_tool_run_live_after_a_reload_and_saved(
    page: Page, make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(tools="calculator")
    upstream.scripts_by_model.pop(model, None)  # the queue below serves this test
    calls = Script(
        tool_calls=[
            {"name": "calculator", "arguments": {"expression": "6*7"}},
            {"name": "calculator", "arguments": {"expression": "1/0"}},
        ]
    )
    assert calls.tool_calls is not None
    good, bad = (call["id"] for call in calls.tool_calls)
    upstream.enqueue(calls, Script(tokens=ANSWER, delay=0.05))
    page.goto(gateway.url + "/")
    send(page, "What is 6*7?")

    # Both blocks settle while the reply is still streaming: reload then, so they come back
    # from the stream's replay (the run is not saved yet).
    expect(tool_block(page, good)).to_have_attribute("data-state", "done")
    expect(tool_block(page, bad)).to_have_attribute("data-state", "failed")
    wait_seq(page, 6)  # 2 calls, 2 results, 2 deltas
    run_id = reply(page).get_attribute("data-run-id")
    assert run_id is not None
    page.reload()
    expect(reply(page)).to_have_attribute("data-run-id", run_id)
    expect_final(page, "completed")
    assert reply_text(page).strip() == "".join(ANSWER).strip()

    # Results carry `duration_ms` once the agent times its tools; older ones show none.
    sent = tool_results(gateway, run_id)
    assert set(sent) == {good, bad}

    def check_blocks(timed: bool) -> None:
        expect(page.locator("details.tool")).to_have_count(2)
        expect(page.locator("article.msg.assistant")).to_have_count(1)
        expect(page.locator("details.tool .tool-name")).to_have_text(["calculator"] * 2)
        expect_block(
            tool_block(page, good),
            name="calculator",
            args="6*7",
            state="done",
            result="42",
            duration=DURATION if timed else None,
        )
        expect_block(
            tool_block(page, bad),
            name="calculator",
            args="1/0",
            state="failed",
            result="error: division by zero",
            duration=DURATION if timed else None,
        )
        arguments = tool_block(page, good).locator(".tool-arguments")
        assert json.loads(arguments.text_content() or "") == {"expression": "6*7"}

    check_blocks(timed="duration_ms" in sent[good])
    # Reopened later, the chat shows the same blocks from the saved messages, once each.
    page.reload()
    expect(reply(page)).to_have_attribute("data-state", "completed")
    expect(reply(page)).not_to_have_attribute("aria-busy", "true")
    saved = saved_session(gateway, session_of(page))["messages"]
    check_blocks(timed=any("duration_ms" in m for m in saved if m["role"] == "tool"))
    assert reply_text(page).strip() == "".join(ANSWER).strip()


# ---------------------------------------------------------------- results in any order
#
# The next test serves the page's API answers itself (the page and everything else come from
# a real gateway), to show what the gateway's own tools do not produce on cue: a call that
# stays running, results out of order with `status` and `duration_ms`, and a replay.

RUN = "run_tools"
CALC_ARGS = json.dumps({"expression": "6*7"})
LOOKUP_ARGS = json.dumps({"q": "<b>birds</b>", "limit": 3})
HOSTILE = 'error: <img src="x" onerror="window.__xss = 1"> not found'


def frame(seq: int, kind: str, data: dict[str, Any]) -> str:
    return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"


CALL_FRAMES = frame(
    1, "tool_call", {"id": "call_a", "name": "calculator", "arguments": CALC_ARGS}
) + frame(2, "tool_call", {"id": "call_b", "name": "lookup", "arguments": LOOKUP_ARGS})
REST_FRAMES = (
    frame(
        3,
        "tool_result",
        {
            "tool_call_id": "call_b",
            "name": "lookup",
            "content": HOSTILE,
            "status": "failed",
            "duration_ms": 1500,
        },
    )
    + frame(
        4,
        "tool_result",
        {
            "tool_call_id": "call_a",
            "name": "calculator",
            "content": "42",
            "status": "done",
            "duration_ms": 412,
        },
    )
    + frame(5, "delta", {"text": "It is 42."})
    + frame(6, "done", {"status": "completed", "usage": None, "error": None})
)


def session_json(session_id: str, active: str | None, messages: list[dict[str, Any]]) -> str:
    now = "2026-01-01T00:00:00Z"
    for message in messages:
        message.setdefault("status", "completed")
        message.setdefault("created_at", now)
        message.setdefault("run_id", None)
        message.setdefault("content", "")
    detail = {
        "session_id": session_id,
        "created_at": now,
        "updated_at": now,
        "active_run_id": active,
        "messages": messages,
    }
    return json.dumps(detail)


def test_results_in_any_order_a_running_call_and_a_replay(
    page: Page, gateway: GatewayServer
) -> None:
    held: list[Route] = []
    served: list[str] = []

    def stream(route: Route) -> None:
        # The first connection brings the calls and ends; the browser reconnects by itself,
        # and that request waits until the test has seen both calls running.
        if held or served:
            held.append(route)
        else:
            served.append(route.request.url)
            route.fulfill(content_type="text/event-stream", body="retry: 50\n\n" + CALL_FRAMES)

    page.route(re.compile(rf"/runs/{RUN}/stream\?"), stream)
    user = [{"role": "user", "content": "Two tools"}]
    page.route(
        re.compile(r"/sessions/live$"),
        lambda route: route.fulfill(
            content_type="application/json", body=session_json("live", RUN, user)
        ),
    )
    page.goto(gateway.url + "/#session=live")

    calc, lookup = tool_block(page, "call_a"), tool_block(page, "call_b")
    for block in (calc, lookup):
        expect(block).to_have_attribute("data-state", "running")
        expect(block.locator(".tool-state")).to_have_text("running…")
        expect(block.locator(".tool-time")).to_have_text("")
    expect(lookup.locator(".tool-args")).to_have_text("(q=<b>birds</b>, limit=3)")
    wait_until(lambda: held, what="the reconnect", page=page)
    # A server that replays from the start: the page drops what it has already shown.
    held[0].fulfill(content_type="text/event-stream", body=CALL_FRAMES + REST_FRAMES)

    expect_final(page, "completed")
    expect(page.locator("details.tool")).to_have_count(2)
    expect(page.locator("details.tool .tool-name")).to_have_text(["calculator", "lookup"])
    expect_block(calc, name="calculator", args="6*7", state="done", result="42", duration="0.4 s")
    expect_block(
        lookup,
        name="lookup",
        args="q=<b>birds</b>, limit=3",
        state="failed",
        result=HOSTILE,
        duration="1.5 s",
    )
    assert page.locator("details.tool img, details.tool b").count() == 0
    assert page.evaluate("() => window.__xss === undefined")
    assert reply_text(page).strip() == "It is 42."

    # The same run saved, results listed in the order they finished, plus a call whose result
    # never came: one reply, three blocks, each with its own result.
    saved = [
        *user,
        {
            "role": "assistant",
            "run_id": RUN,
            "tool_calls": [
                {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                for i, n, a in (
                    ("call_a", "calculator", CALC_ARGS),
                    ("call_b", "lookup", LOOKUP_ARGS),
                    ("call_c", "calculator", "{}"),
                )
            ],
        },
        {
            "role": "tool",
            "run_id": RUN,
            "tool_call_id": "call_b",
            "name": "lookup",
            "content": HOSTILE,
            "status": "failed",
            "duration_ms": 1500,
        },
        {
            "role": "tool",
            "run_id": RUN,
            "tool_call_id": "call_a",
            "name": "calculator",
            "content": "42",
            "status": "done",
            "duration_ms": 412,
        },
        {"role": "assistant", "run_id": RUN, "content": "It is 42."},
    ]
    page.route(
        re.compile(r"/sessions/saved$"),
        lambda route: route.fulfill(
            content_type="application/json", body=session_json("saved", None, saved)
        ),
    )
    page.goto(gateway.url + "/#session=saved")
    expect(page.locator("details.tool")).to_have_count(3)
    expect(page.locator("article.msg.assistant")).to_have_count(1)
    expect_block(calc, name="calculator", args="6*7", state="done", result="42", duration="0.4 s")
    expect_block(
        lookup,
        name="lookup",
        args="q=<b>birds</b>, limit=3",
        state="failed",
        result=HOSTILE,
        duration="1.5 s",
    )
    lost = tool_block(page, "call_c")
    expect(lost).to_have_attribute("data-state", "unfinished")
    expect(lost.locator(".tool-state")).to_have_text("no result")
    assert reply_text(page).strip() == "It is 42."
