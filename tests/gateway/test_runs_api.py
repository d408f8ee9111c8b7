"""The runs API end to end: a real gateway (uvicorn, SQLite) against the real fake upstream,
driven over HTTP with httpx and read with a spec-following SSE reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from martlet_molt.testing import FakeUpstream, RequestRecord, Script
from tests.conftest import GatewayFactory, script
from tests.gateway_server import GatewayServer
from tests.sse_client import SseEvent, SseStream, parse_lines, read_sse, split_lines

FINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "interrupted"})
TIMEOUT = 4.0
"""Seconds any single wait in these tests may take."""

Json = dict[str, Any]


def client_for(gateway: GatewayServer, timeout: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.url, timeout=timeout)


def records_of(upstream: FakeUpstream, model: str) -> list[RequestRecord]:
    """The upstream requests this test's gateway made (its model name is unique)."""
    return [r for r in upstream.records if r.model == model]


def bodies_of(upstream: FakeUpstream, model: str) -> list[Json]:
    return [r.body for r in records_of(upstream, model)]


async def wait_for_run(client: httpx.AsyncClient, run_id: str) -> Json:
    """Poll `GET /runs/{id}` (bounded) until the run has ended."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            response = await client.get(f"/runs/{run_id}")
            assert response.status_code == 200, response.text
            run: Json = response.json()
            if run["status"] in FINAL_STATUSES:
                return run
            await asyncio.sleep(0.02)


async def wait_for_session(
    client: httpx.AsyncClient, session_id: str, done: Callable[[Json], bool]
) -> Json:
    """Poll `GET /sessions/{id}` (bounded) until it exists and `done(body)` holds."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            response = await client.get(f"/sessions/{session_id}")
            if response.status_code == 200:
                body: Json = response.json()
                if done(body):
                    return body
            else:
                assert response.status_code == 404, response.text
            await asyncio.sleep(0.02)


async def wait_for_active_run(client: httpx.AsyncClient, session_id: str) -> str:
    """The id of the session's active run, once the session has one."""
    session = await wait_for_session(client, session_id, lambda s: s["active_run_id"] is not None)
    active: str = session["active_run_id"]
    return active


async def wait_for_upstream_disconnect(upstream: FakeUpstream, model: str) -> bool:
    """Whether the gateway closed (one of) this model's upstream requests mid-response."""
    return await upstream.wait_until_async(
        lambda u: any(r.model == model and r.client_disconnected for r in u.records),
        timeout=TIMEOUT,
    )


def error_of(response: httpx.Response) -> Json:
    """The `error` object of a gateway error answer (and check its shape)."""
    body = response.json()
    assert set(body) == {"error"}, body
    error: Json = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    return error


def kinds(stream: SseStream) -> list[str]:
    return [e.event for e in stream.events]


def delta_text(events: list[SseEvent]) -> str:
    return "".join(e.json()["text"] for e in events if e.event == "delta")


async def session_count(client: httpx.AsyncClient) -> int:
    response = await client.get("/sessions")
    assert response.status_code == 200, response.text
    total: int = response.json()["total"]
    return total


# --------------------------------------------------------------------------- 1. POST /chat


@pytest.mark.asyncio
async def test_chat_returns_whole_reply_and_sessions_accumulate_history(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(system_prompt="Be brief.")
    sent = script(upstream, model, tokens=["Hello", ", ", "world", "!"])
    async with client_for(gateway) as client:
        first = await client.post("/chat", json={"message": "hi there"})
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["reply"] == sent.text == "Hello, world!"
        assert body["status"] == "completed"
        assert body["error"] is None
        session_id = body["session_id"]
        assert session_id
        assert body["run_id"]

        other = await client.post("/chat", json={"message": "somebody else"})
        assert other.status_code == 200, other.text
        assert other.json()["session_id"] != session_id
        assert other.json()["run_id"] != body["run_id"]

        again = await client.post("/chat", json={"message": "again", "session_id": session_id})
        assert again.status_code == 200, again.text
        assert again.json()["session_id"] == session_id
        assert again.json()["reply"] == sent.text
        assert again.json()["status"] == "completed"

        system = {"role": "system", "content": "Be brief."}
        requests = bodies_of(upstream, model)
        assert len(requests) == 3
        assert all(r["model"] == model and r["stream"] is True for r in requests)
        assert requests[0]["messages"] == [system, {"role": "user", "content": "hi there"}]
        assert requests[1]["messages"] == [system, {"role": "user", "content": "somebody else"}]
        assert requests[2]["messages"] == [
            system,
            {"role": "user", "content": "hi there"},
            {"role": "assistant", "content": "Hello, world!"},
            {"role": "user", "content": "again"},
        ]

        session = (await client.get(f"/sessions/{session_id}")).json()
        assert session["active_run_id"] is None
        assert [
            (m["role"], m["content"], m["status"], m["run_id"]) for m in session["messages"]
        ] == [
            ("user", "hi there", "completed", body["run_id"]),
            ("assistant", "Hello, world!", "completed", body["run_id"]),
            ("user", "again", "completed", again.json()["run_id"]),
            ("assistant", "Hello, world!", "completed", again.json()["run_id"]),
        ]
        assert await session_count(client) == 2


# --------------------------------------------------------------------------- 2. disconnects


@pytest.mark.asyncio
async def test_reply_is_saved_when_the_chat_client_gives_up(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=20, delay=0.04)
    session_id = "walk-away-1"
    async with client_for(gateway, timeout=0.3) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post(
                "/chat", json={"message": "take your time", "session_id": session_id}
            )

    async with client_for(gateway) as client:
        session = await wait_for_session(
            client,
            session_id,
            lambda s: len(s["messages"]) == 2 and s["messages"][1]["status"] != "pending",
        )
        user, assistant = session["messages"]
        assert (user["role"], user["content"]) == ("user", "take your time")
        assert (assistant["role"], assistant["content"], assistant["status"]) == (
            "assistant",
            sent.text,
            "completed",
        )
        run = await wait_for_run(client, assistant["run_id"])
        assert run["status"] == "completed"
        assert run["content"] == sent.text
    (record,) = records_of(upstream, model)
    assert record.completed
    assert not record.client_disconnected


# --------------------------------------------------------------------------- 3. busy sessions


@pytest.mark.asyncio
async def test_second_run_in_a_busy_session_is_409_until_the_first_ends(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    slow = script(upstream, model, token_count=15, delay=0.04)
    session_id = "busy-1"
    async with client_for(gateway) as client:
        first = asyncio.create_task(
            client.post("/chat", json={"message": "first", "session_id": session_id})
        )
        active = await wait_for_active_run(client, session_id)

        busy = await client.post("/chat", json={"message": "second", "session_id": session_id})
        assert busy.status_code == 409, busy.text
        error = error_of(busy)
        assert error["code"] == "session_busy"
        assert error["details"]["active_run_id"] == active
        assert error["details"]["session_id"] == session_id

        busy_stream = await read_sse(
            client, "POST", "/chat/stream", json_body={"message": "x", "session_id": session_id}
        )
        assert busy_stream.status_code == 409
        assert json.loads(busy_stream.comments[0])["error"]["details"]["active_run_id"] == active

        done = await first
        assert done.status_code == 200, done.text
        assert done.json()["run_id"] == active
        assert done.json()["reply"] == slow.text

        fast = script(upstream, model, tokens=["ok"])
        after = await client.post("/chat", json={"message": "third", "session_id": session_id})
        assert after.status_code == 200, after.text
        assert after.json()["reply"] == fast.text
        assert after.json()["status"] == "completed"

        session = (await client.get(f"/sessions/{session_id}")).json()
        assert [(m["role"], m["content"]) for m in session["messages"]] == [
            ("user", "first"),
            ("assistant", slow.text),
            ("user", "third"),
            ("assistant", "ok"),
        ]


@pytest.mark.asyncio
async def test_concurrent_posts_on_one_session_one_wins_one_409(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=10, delay=0.02)
    session_id = "race-1"
    async with client_for(gateway) as client:
        streams = await asyncio.gather(
            *(
                read_sse(
                    client,
                    "POST",
                    "/chat/stream",
                    json_body={"message": message, "session_id": session_id},
                )
                for message in ("left", "right")
            )
        )
        assert sorted(s.status_code for s in streams) == [200, 409]
        winner_index = 0 if streams[0].status_code == 200 else 1
        winner, loser = streams[winner_index], streams[1 - winner_index]
        run_id = winner.headers["x-run-id"]
        assert winner.headers["x-session-id"] == session_id
        assert winner.texts[-1] == "[DONE]"
        assert "".join(winner.texts[:-1]) == sent.text
        assert json.loads(loser.comments[0])["error"]["details"]["active_run_id"] == run_id

        session = (await client.get(f"/sessions/{session_id}")).json()
        assert [(m["role"], m["content"], m["run_id"]) for m in session["messages"]] == [
            ("user", ("left", "right")[winner_index], run_id),
            ("assistant", sent.text, run_id),
        ]
    assert len(records_of(upstream, model)) == 1


# --------------------------------------------------------------------------- 4. cancel


@pytest.mark.asyncio
async def test_cancel_closes_upstream_saves_prefix_and_ends_readers(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=200, delay=0.02)
    async with client_for(gateway) as client:
        live = SseStream()
        async with client.stream(
            "POST", "/chat/stream?format=json", json={"message": "count slowly"}
        ) as response:
            assert response.status_code == 200
            run_id = response.headers["x-run-id"]
            session_id = response.headers["x-session-id"]
            text_reader = asyncio.create_task(read_sse(client, "GET", f"/runs/{run_id}/stream"))
            events = parse_lines(split_lines(response.aiter_text()), live)
            async with asyncio.timeout(TIMEOUT):
                async for _ in events:
                    if len(live.events) >= 3:
                        break

                cancelled = await client.post(f"/runs/{run_id}/cancel")
                assert cancelled.status_code == 200, cancelled.text
                run = cancelled.json()
                async for _ in events:
                    pass

        assert run["run_id"] == run_id
        assert run["status"] == "cancelled"
        assert run["error"] is None
        content: str = run["content"]
        assert content
        assert sent.text.startswith(content)
        assert len(content) < len(sent.text)

        # The live json reader: deltas, then `done` with status cancelled.
        assert set(kinds(live)[:-1]) == {"delta"}
        assert kinds(live)[-1] == "done"
        assert live.events[-1].json()["status"] == "cancelled"
        assert live.events[-1].json()["error"] is None
        assert delta_text(live.events) == content

        # A text reader of the same run gets `[ERROR] cancelled` last.
        text = await asyncio.wait_for(text_reader, TIMEOUT)
        assert text.status_code == 200
        assert text.texts[-1] == "[ERROR] cancelled"
        assert "".join(text.texts[:-1]) == content

        # The upstream request was closed, not left streaming.
        assert await wait_for_upstream_disconnect(upstream, model)
        (record,) = records_of(upstream, model)
        assert record.client_disconnected
        assert not record.completed

        session = (await client.get(f"/sessions/{session_id}")).json()
        assert session["active_run_id"] is None
        assert [(m["role"], m["content"], m["status"]) for m in session["messages"]] == [
            ("user", "count slowly", "completed"),
            ("assistant", content, "cancelled"),
        ]
        assert (await client.get(f"/runs/{run_id}")).json() == run

        again = await client.post(f"/runs/{run_id}/cancel")
        assert again.status_code == 200
        assert again.json() == run

        unknown = await client.post("/runs/run_doesnotexist/cancel")
        assert unknown.status_code == 404
        assert error_of(unknown)["code"] == "run_not_found"


@pytest.mark.asyncio
async def test_cancel_while_the_run_is_being_saved_still_ends_it(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    """A cancel that lands after the stream ended but before the run's outcome is saved (here:
    right after the reply cap stopped the stream) must still leave a finished run, an ended
    stream and a free session."""
    cap = 2_000
    gateway = make_gateway(max_reply_chars=cap)
    sent = script(upstream, model, token_count=100, token_text="{i}".ljust(50, "x"))
    assert len(sent.text) > cap
    async with client_for(gateway) as client:
        live = SseStream()
        received = 0
        async with client.stream(
            "POST", "/chat/stream?format=json", json={"message": "go on", "session_id": "late-1"}
        ) as response:
            assert response.status_code == 200
            run_id = response.headers["x-run-id"]
            events = parse_lines(split_lines(response.aiter_text()), live)
            async with asyncio.timeout(TIMEOUT):
                async for event in events:
                    if event.event == "delta":
                        received += len(event.json()["text"])
                    if received >= cap:
                        break  # the cap stopped the stream: the run is now saving its outcome
            cancelled = await client.post(f"/runs/{run_id}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            run = cancelled.json()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    async for _ in events:
                        pass

        assert run["status"] in ("failed", "cancelled"), run
        assert run["content"] == sent.text[:cap]
        assert (await client.get(f"/runs/{run_id}")).json()["status"] == run["status"]
        assert kinds(live)[-1] == "done"
        assert live.events[-1].json()["status"] == run["status"]

        session = (await client.get("/sessions/late-1")).json()
        assert session["active_run_id"] is None
        assert [(m["role"], m["content"]) for m in session["messages"]] == [
            ("user", "go on"),
            ("assistant", sent.text[:cap]),
        ]
        script(upstream, model, tokens=["next"])
        after = await client.post("/chat", json={"message": "again", "session_id": "late-1"})
        assert after.status_code == 200, after.text
        assert after.json()["reply"] == "next"


# --------------------------------------------------------------------------- 5. upstream errors


@pytest.mark.asyncio
async def test_mid_stream_upstream_failure_is_an_event_and_keeps_the_partial_reply(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, tokens=[f"part{i}|" for i in range(10)], fail_after=5)
    partial = "".join(sent.chunks[:5])
    async with client_for(gateway) as client:
        text = await read_sse(client, "POST", "/chat/stream", json_body={"message": "go"})
        assert text.status_code == 200
        assert text.texts[-1].startswith("[ERROR] ")
        assert text.texts[-1].removeprefix("[ERROR] ").strip()
        assert "".join(text.texts[:-1]) == partial

        run = await wait_for_run(client, text.headers["x-run-id"])
        assert run["status"] == "failed"
        assert run["error"]
        assert run["content"] == partial
        assert text.texts[-1] == f"[ERROR] {run['error']}"

        session = (await client.get(f"/sessions/{text.headers['x-session-id']}")).json()
        assert [(m["role"], m["content"], m["status"]) for m in session["messages"]] == [
            ("user", "go", "completed"),
            ("assistant", partial, "failed"),
        ]

        as_json = await read_sse(
            client, "POST", "/chat/stream?format=json", json_body={"message": "go again"}
        )
        assert as_json.status_code == 200
        assert kinds(as_json) == ["delta"] * 5 + ["error", "done"]
        assert delta_text(as_json.events) == partial
        error_event, done_event = as_json.events[-2].json(), as_json.events[-1].json()
        assert error_event["message"]
        assert done_event["status"] == "failed"
        assert done_event["error"] == error_event["message"]
        json_run = await wait_for_run(client, as_json.headers["x-run-id"])
        assert json_run["status"] == "failed"
        assert json_run["error"] == error_event["message"]
        assert json_run["content"] == partial


@pytest.mark.asyncio
async def test_upstream_http_error_before_first_token_fails_the_run(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(
        upstream,
        model,
        error_status=500,
        error_body="the model is on fire",
        response_headers={"retry-after-ms": "5"},  # keep the SDK's retries quick
    )
    async with client_for(gateway) as client:
        stream = await read_sse(client, "POST", "/chat/stream", json_body={"message": "hello?"})
        assert stream.status_code == 200
        assert stream.texts[-1].startswith("[ERROR] ")
        assert len(stream.texts) == 1  # no text before the error

        run = await wait_for_run(client, stream.headers["x-run-id"])
        assert run["status"] == "failed"
        assert run["content"] == ""
        assert "500" in run["error"]
        assert "the model is on fire" in run["error"]
        assert stream.texts[-1] == f"[ERROR] {run['error']}"

        session = (await client.get(f"/sessions/{stream.headers['x-session-id']}")).json()
        user = session["messages"][0]
        assert (user["role"], user["content"], user["run_id"]) == ("user", "hello?", run["run_id"])
        # Nothing but an (empty, failed) placeholder reply may follow the user message.
        assert [(m["role"], m["content"], m["status"]) for m in session["messages"][1:]] in (
            [],
            [("assistant", "", "failed")],
        )

        chat = await client.post("/chat", json={"message": "still there?"})
        assert chat.status_code == 200
        assert chat.json()["status"] == "failed"
        assert chat.json()["reply"] == ""
        assert "500" in chat.json()["error"]
    assert records_of(upstream, model)


# --------------------------------------------------------------------------- 6. tools


@pytest.mark.asyncio
async def test_tool_loop_end_to_end(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(tools="calculator")
    # A script set for this model would win over the queue: make sure there is none.
    upstream.scripts_by_model.pop(model, None)
    call = Script(tool_calls=[{"name": "calculator", "arguments": {"expression": "6*7"}}])
    answer = Script(tokens=["The answer", " is 42."])
    assert call.tool_calls is not None
    call_id: str = call.tool_calls[0]["id"]
    upstream.enqueue(call, answer)

    async with client_for(gateway) as client:
        stream = await read_sse(
            client, "POST", "/chat/stream?format=json", json_body={"message": "what is 6*7?"}
        )
        assert stream.status_code == 200
        session_id = stream.headers["x-session-id"]
        run_id = stream.headers["x-run-id"]
        assert kinds(stream)[:2] == ["tool_call", "tool_result"]
        assert kinds(stream)[-1] == "done"
        assert set(kinds(stream)[2:-1]) == {"delta"}
        tool_call, tool_result = stream.events[0].json(), stream.events[1].json()
        assert tool_call["id"] == call_id
        assert tool_call["name"] == "calculator"
        assert json.loads(tool_call["arguments"]) == {"expression": "6*7"}
        duration = tool_result.pop("duration_ms")
        assert isinstance(duration, int)
        assert duration >= 0
        assert tool_result == {
            "tool_call_id": call_id,
            "name": "calculator",
            "content": "42",
            "status": "done",
        }
        assert delta_text(stream.events) == answer.text
        assert stream.events[-1].json()["status"] == "completed"

        requests = bodies_of(upstream, model)
        assert len(requests) == 2
        assert [t["function"]["name"] for t in requests[0]["tools"]] == ["calculator"]
        user = {"role": "user", "content": "what is 6*7?"}
        assistant_call = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "calculator", "arguments": tool_call["arguments"]},
                }
            ],
        }
        tool_message = {"role": "tool", "tool_call_id": call_id, "content": "42"}
        assert requests[0]["messages"] == [user]
        assert requests[1]["messages"] == [user, assistant_call, tool_message]

        run = await wait_for_run(client, run_id)
        assert run["status"] == "completed"
        assert run["content"] == answer.text

        session = (await client.get(f"/sessions/{session_id}")).json()
        messages = session["messages"]
        assert [(m["role"], m["content"]) for m in messages] == [
            ("user", "what is 6*7?"),
            ("assistant", ""),
            ("tool", "42"),
            ("assistant", answer.text),
        ]
        assert messages[1]["tool_calls"] == assistant_call["tool_calls"]
        assert (messages[2]["tool_call_id"], messages[2]["name"]) == (call_id, "calculator")
        assert all(m["run_id"] == run_id and m["status"] == "completed" for m in messages)

        # The next turn sends the whole tool exchange back upstream.
        script(upstream, model, tokens=["You're welcome."])
        thanks = await client.post("/chat", json={"message": "thanks", "session_id": session_id})
        assert thanks.status_code == 200, thanks.text
        assert thanks.json()["reply"] == "You're welcome."
        requests = bodies_of(upstream, model)
        assert len(requests) == 3
        assert requests[2]["messages"] == [
            user,
            assistant_call,
            tool_message,
            {"role": "assistant", "content": answer.text},
            {"role": "user", "content": "thanks"},
        ]


# --------------------------------------------------------------------------- 7. reply cap


@pytest.mark.asyncio
async def test_reply_longer_than_the_cap_fails_keeping_exactly_the_cap(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(max_reply_chars=100)
    sent = script(upstream, model, token_count=40, token_text="word{i} ")
    assert len(sent.text) > 100
    async with client_for(gateway) as client:
        chat = await client.post("/chat", json={"message": "talk a lot"})
        assert chat.status_code == 200, chat.text
        body = chat.json()
        assert body["status"] == "failed"
        assert "100" in body["error"]
        assert "limit" in body["error"]
        assert body["reply"] == sent.text[:100]

        run = await wait_for_run(client, body["run_id"])
        assert run["status"] == "failed"
        assert run["content"] == sent.text[:100]
        assert run["error"] == body["error"]

        session = (await client.get(f"/sessions/{body['session_id']}")).json()
        assert [(m["role"], m["content"], m["status"]) for m in session["messages"]] == [
            ("user", "talk a lot", "completed"),
            ("assistant", sent.text[:100], "failed"),
        ]


# --------------------------------------------------------------------------- 8. no provider


@pytest.mark.asyncio
async def test_no_provider_answers_503_and_saves_nothing(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(provider="openai", openai_base_url=None, openai_api_key=None)
    async with client_for(gateway) as client:
        chat = await client.post("/chat", json={"message": "hi"})
        stream = await client.post("/chat/stream", json={"message": "hi", "session_id": "s-1"})
        for response in (chat, stream):
            assert response.status_code == 503, response.text
            error = error_of(response)
            assert error["code"] == "provider_not_configured"
            assert "OPENAI_API_KEY" in error["message"]
            assert "OPENAI_BASE_URL" in error["message"]

        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "provider": None, "model": None}
        assert await session_count(client) == 0
        assert (await client.get("/sessions/s-1")).status_code == 404


# --------------------------------------------------------------------------- 9. validation


INVALID_BODIES: list[Any] = [
    {"message": ""},
    {"message": "   "},
    {"message": " \n\t "},
    {},
    {"session_id": "abc"},
    {"message": None},
    {"message": 123},
    {"message": ["hi"]},
    {"message": "hi", "unknown": 1},
    {"message": "hi", "session_id": 5},
    {"message": "hi", "session_id": "a/b"},
    {"message": "hi", "session_id": "../x"},
    {"message": "hi", "session_id": ""},
    {"message": "hi", "session_id": "x" * 200},
    {"message": "hi", "client_request_id": "has space"},
    ["hi"],
    "hi",
]


@pytest.mark.asyncio
async def test_invalid_requests_are_422_and_save_nothing(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(max_message_chars=10)
    sent = script(upstream, model, tokens=["fine"])
    async with client_for(gateway) as client:
        for path in ("/chat", "/chat/stream"):
            for body in INVALID_BODIES:
                response = await client.post(path, json=body)
                assert response.status_code == 422, (path, body, response.text)
            not_json = await client.post(
                path, content=b"{not json", headers={"content-type": "application/json"}
            )
            assert not_json.status_code == 422, not_json.text

            too_long = await client.post(path, json={"message": "x" * 11})
            assert too_long.status_code == 422, too_long.text
            error = error_of(too_long)
            assert error["code"] == "invalid_request"
            assert "10" in error["message"]

        assert await session_count(client) == 0
        assert records_of(upstream, model) == []

        at_limit = await client.post("/chat", json={"message": "x" * 10})
        assert at_limit.status_code == 200, at_limit.text
        assert at_limit.json()["reply"] == sent.text
        assert await session_count(client) == 1


@pytest.mark.asyncio
async def test_unknown_sessions_and_runs_are_404(gateway: GatewayServer) -> None:
    async with client_for(gateway) as client:
        for method, path, code in (
            ("GET", "/sessions/nope", "session_not_found"),
            ("DELETE", "/sessions/nope", "session_not_found"),
            ("GET", "/runs/run_nope", "run_not_found"),
            ("GET", "/runs/run_nope/stream", "run_not_found"),
            ("POST", "/runs/run_nope/cancel", "run_not_found"),
        ):
            response = await client.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            error = error_of(response)
            assert error["code"] == code
            assert "nope" in error["message"]


# --------------------------------------------------------------------------- 10. sessions


@pytest.mark.asyncio
async def test_session_listing_is_paginated_newest_first(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=["ok"])
    async with client_for(gateway) as client:
        created: list[str] = []
        for i in range(3):
            response = await client.post("/chat", json={"message": f"hello {i}"})
            assert response.status_code == 200, response.text
            created.append(response.json()["session_id"])

        first = await client.get("/sessions", params={"limit": 2, "offset": 0})
        assert first.status_code == 200
        page = first.json()
        assert (page["total"], page["limit"], page["offset"]) == (3, 2, 0)
        assert [s["session_id"] for s in page["sessions"]] == [created[2], created[1]]
        assert all(s["active_run_id"] is None for s in page["sessions"])
        assert all(
            set(s) == {"session_id", "title", "created_at", "updated_at", "active_run_id"}
            for s in page["sessions"]
        )

        second = (await client.get("/sessions", params={"limit": 2, "offset": 2})).json()
        assert (second["total"], second["limit"], second["offset"]) == (3, 2, 2)
        assert [s["session_id"] for s in second["sessions"]] == [created[0]]

        beyond = (await client.get("/sessions", params={"limit": 2, "offset": 5})).json()
        assert (beyond["sessions"], beyond["total"]) == ([], 3)

        for params in ({"limit": 0}, {"limit": 201}, {"offset": -1}, {"limit": "x"}):
            assert (await client.get("/sessions", params=params)).status_code == 422


@pytest.mark.asyncio
async def test_deleting_a_session_cancels_its_active_run(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=200, delay=0.02)
    session_id = "doomed-1"
    async with client_for(gateway) as client:
        chat = asyncio.create_task(
            client.post("/chat", json={"message": "long story", "session_id": session_id})
        )
        run_id = await wait_for_active_run(client, session_id)
        listed = (await client.get("/sessions")).json()
        assert [(s["session_id"], s["active_run_id"]) for s in listed["sessions"]] == [
            (session_id, run_id)
        ]

        deleted = await client.delete(f"/sessions/{session_id}")
        assert deleted.status_code == 204
        assert deleted.content == b""

        ended = await asyncio.wait_for(chat, TIMEOUT)
        assert ended.status_code == 200, ended.text
        assert ended.json()["run_id"] == run_id
        assert ended.json()["status"] == "cancelled"
        assert sent.text.startswith(ended.json()["reply"])
        assert len(ended.json()["reply"]) < len(sent.text)

        assert await wait_for_upstream_disconnect(upstream, model)

        assert (await client.get(f"/sessions/{session_id}")).status_code == 404
        gone_run = await client.get(f"/runs/{run_id}")
        assert gone_run.status_code == 404
        assert error_of(gone_run)["code"] == "run_not_found"
        assert await session_count(client) == 0
        assert (await client.delete(f"/sessions/{session_id}")).status_code == 404


# --------------------------------------------------------------------------- 11. usage


@pytest.mark.asyncio
async def test_usage_is_reported_on_the_run_and_the_done_event(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=["a", "b", "c"], prompt_tokens=7, completion_tokens=3)
    expected = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    async with client_for(gateway) as client:
        stream = await read_sse(
            client, "POST", "/chat/stream?format=json", json_body={"message": "count"}
        )
        assert stream.status_code == 200
        done = stream.events[-1]
        assert done.event == "done"
        assert done.json() == {
            "status": "completed",
            "usage": expected,
            "error": None,
            "finish_reason": "stop",
        }

        run = await wait_for_run(client, stream.headers["x-run-id"])
        assert run["status"] == "completed"
        assert run["usage"] == expected

        # Default token counts: the prompt's word count, one completion token per chunk.
        script(upstream, model, tokens=["x", "y"])
        chat = await client.post("/chat", json={"message": "two words"})
        chat_run = await wait_for_run(client, chat.json()["run_id"])
        assert chat_run["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


@pytest.mark.asyncio
async def test_a_reply_cut_at_its_token_limit_is_completed_and_says_length(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=["a", "b"], finish_reason="length")
    async with client_for(gateway) as client:
        stream = await read_sse(
            client, "POST", "/chat/stream?format=json", json_body={"message": "go on"}
        )
        run = await wait_for_run(client, stream.headers["x-run-id"])
    done = stream.events[-1].json()
    assert (done["status"], done["error"], done["finish_reason"]) == ("completed", None, "length")
    assert not [e for e in stream.events if e.event == "error"]
    assert (run["status"], run["content"], run["error"]) == ("completed", "ab", None)
