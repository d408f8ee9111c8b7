"""Tests for the fake OpenAI-compatible upstream, driven by the real `openai` SDK."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from martlet_molt.testing import FakeUpstream, Script

MODEL = "fake-model"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]

AWKWARD = [
    "Hello",
    "\n",
    "line one\r\nline two",
    "\r",
    "[DONE]",
    " [ERROR] x",
    "\n\nevent: x\ndata: y",
    "data: [DONE]\n\n",
    "",
    "😀🎉 ",
    "中文字符，日本語",
    "é\u2028\u2029\x00",
    '{"json": "inside"}',
    " end",
]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    """A running fake upstream."""
    with FakeUpstream() as up:
        yield up


@pytest_asyncio.fixture
async def client(upstream: FakeUpstream) -> AsyncIterator[AsyncOpenAI]:
    """A real OpenAI SDK client pointed at the fake upstream."""
    async with AsyncOpenAI(base_url=upstream.base_url, api_key="test", max_retries=0) as c:
        yield c


async def _collect_text(client: AsyncOpenAI, model: str = MODEL) -> tuple[str, list[Any]]:
    stream = await client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
    chunks = [c async for c in stream]
    text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    return text, chunks


@pytest.mark.asyncio
async def test_text_round_trip_awkward(upstream: FakeUpstream, client: AsyncOpenAI) -> None:
    """Awkward text (SSE-lookalikes, CR/LF, emoji, CJK) reassembles exactly."""
    script = Script(tokens=AWKWARD)
    upstream.enqueue(script)
    text, chunks = await _collect_text(client)
    assert text == script.text == "".join(AWKWARD)
    first, last = chunks[0].choices[0], chunks[-1].choices[0]
    assert first.delta.role == "assistant"
    assert first.delta.content == ""
    assert last.finish_reason == "stop"
    assert last.delta.content is None
    assert upstream.wait_for_completed(1, timeout=2)
    (record,) = upstream.records
    assert record.completed
    assert not record.client_disconnected
    assert record.chunks_sent == len(AWKWARD)
    assert record.headers["authorization"] == "Bearer test"
    assert upstream.requests == [record.body]
    assert record.body["messages"] == MESSAGES
    assert record.body["stream"] is True


@pytest.mark.asyncio
async def test_wire_format_is_exact(upstream: FakeUpstream) -> None:
    """Raw bytes follow OpenAI's SSE chunk format, ending in `data: [DONE]`."""
    upstream.enqueue(Script(tokens=["a", "b"]))
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{upstream.base_url}/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    raw = response.text
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events)
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert [p["choices"][0]["delta"] for p in payloads[:4]] == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": "a"},
        {"content": "b"},
        {},
    ]
    assert payloads[3]["choices"][0]["finish_reason"] == "stop"
    assert {p["object"] for p in payloads} == {"chat.completion.chunk"}
    assert len({p["id"] for p in payloads}) == 1
    assert payloads[4]["choices"] == []
    assert payloads[4]["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


@pytest.mark.asyncio
async def test_generated_tokens_non_streaming(upstream: FakeUpstream, client: AsyncOpenAI) -> None:
    """Generated tokens come back whole in a non-streaming chat.completion."""
    script = Script(token_count=4)
    assert script.text == "tok0 tok1 tok2 tok3 "
    upstream.enqueue(script)
    completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == script.text
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4
    assert upstream.records[0].completed
    assert upstream.records[0].stream is False


@pytest.mark.asyncio
async def test_tool_call_fragments_assemble(upstream: FakeUpstream, client: AsyncOpenAI) -> None:
    """Tool-call argument fragments assemble into the scripted arguments."""
    script = Script(
        tokens=["Let me ", "check."],
        tool_calls=[
            {"name": "calculator", "arguments": {"expression": "2+2"}},
            {"name": "lookup", "arguments": {"q": 'naïve "quoted" 中文'}, "id": "call_given"},
        ],
    )
    upstream.enqueue(script)
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    text = ""
    calls: dict[int, dict[str, str]] = {}
    fragments: dict[int, int] = {}
    finish = None
    async for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        text += choice.delta.content or ""
        for tc in choice.delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            if tc.id:
                entry["id"] = tc.id
            if tc.function and tc.function.name:
                entry["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                entry["arguments"] += tc.function.arguments
                fragments[tc.index] = fragments.get(tc.index, 0) + 1
        finish = choice.finish_reason or finish
    assert text == "Let me check."
    assert finish == "tool_calls"
    assert calls[0]["name"] == "calculator"
    assert calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == {"expression": "2+2"}
    assert calls[1] == {
        "id": "call_given",
        "name": "lookup",
        "arguments": json.dumps({"q": 'naïve "quoted" 中文'}),
    }
    assert fragments[0] >= 2
    assert fragments[1] >= 2
    assert script.tool_calls is not None
    assert calls[0]["id"] == script.tool_calls[0]["id"]


@pytest.mark.asyncio
async def test_tool_calls_non_streaming(upstream: FakeUpstream, client: AsyncOpenAI) -> None:
    """Non-streaming replies carry tool calls in the message."""
    upstream.enqueue(Script(tool_calls=[{"name": "calculator", "arguments": {"x": 1}}]))
    completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    message = completion.choices[0].message
    assert message.content is None
    assert message.tool_calls is not None
    call: Any = message.tool_calls[0]
    assert call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"x": 1}
    assert completion.choices[0].finish_reason == "tool_calls"


@pytest.mark.asyncio
async def test_usage_chunk(upstream: FakeUpstream, client: AsyncOpenAI) -> None:
    """include_usage yields a final usage chunk with empty choices."""
    upstream.enqueue(Script(token_count=3, prompt_tokens=11))
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 11
    assert chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].usage.total_tokens == 14
    assert all(c.usage is None for c in chunks[:-1])

    # Without include_usage there is no usage chunk.
    upstream.enqueue(Script(token_count=3))
    _, chunks = await _collect_text(client)
    assert all(c.choices for c in chunks)


@pytest.mark.asyncio
async def test_error_status_429(upstream: FakeUpstream, client: AsyncOpenAI) -> None:
    """error_status=429 raises RateLimitError with the retry-after header."""
    upstream.enqueue(Script(error_status=429, retry_after="7"))
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.code == "rate_limit_exceeded"
    assert upstream.records[0].status == 429


@pytest.mark.asyncio
async def test_error_status_custom_body(upstream: FakeUpstream, client: AsyncOpenAI) -> None:
    """A string error_body becomes the error message."""
    upstream.enqueue(Script(error_status=500, error_body="boom"))
    with pytest.raises(openai.InternalServerError, match="boom"):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)


@pytest.mark.asyncio
async def test_fail_after_drops_connection(upstream: FakeUpstream, client: AsyncOpenAI) -> None:
    """fail_after cuts the connection mid-stream; the SDK raises."""
    upstream.enqueue(Script(token_count=10, fail_after=3))
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    received: list[str] = []

    async def consume() -> None:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIConnectionError):
        await consume()
    assert "".join(received) == "tok0 tok1 tok2 "
    assert upstream.wait_until(lambda u: u.records[0].finished, timeout=2)
    record = upstream.records[0]
    assert record.dropped
    assert not record.completed
    assert record.chunks_sent == 3


@pytest.mark.asyncio
async def test_malformed_after(upstream: FakeUpstream, client: AsyncOpenAI) -> None:
    """A malformed data line makes the SDK raise a JSON error."""
    upstream.enqueue(Script(token_count=4, malformed_after=2))
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    with pytest.raises(json.JSONDecodeError):
        async for _ in stream:
            pass
    await stream.close()


@pytest.mark.asyncio
async def test_error_event_after(upstream: FakeUpstream, client: AsyncOpenAI) -> None:
    """An in-stream error event makes the SDK raise APIError."""
    upstream.enqueue(Script(token_count=4, error_event_after=1))
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError, match="server had an error"):
        async for _ in stream:
            pass
    await stream.close()


@pytest.mark.asyncio
async def test_client_close_is_seen_as_disconnect(
    upstream: FakeUpstream, client: AsyncOpenAI
) -> None:
    """Closing the stream early is recorded as a client disconnect."""
    upstream.enqueue(Script(token_count=5, stall_after=2))
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    got = 0
    async for chunk in stream:
        if chunk.choices[0].delta.content:
            got += 1
            if got == 2:
                break
    assert upstream.in_flight == 1
    await stream.close()
    assert await upstream.wait_for_disconnect_async(timeout=3)
    assert await upstream.wait_for_idle_async(timeout=3)
    record = upstream.records[0]
    assert record.client_disconnected
    assert not record.completed
    assert record.chunks_sent == 2
    assert upstream.disconnect_count == 1


@pytest.mark.asyncio
async def test_client_close_during_delay(upstream: FakeUpstream, client: AsyncOpenAI) -> None:
    """A disconnect during an inter-chunk delay is noticed promptly."""
    upstream.enqueue(Script(token_count=100, delay=0.05))
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    async for chunk in stream:
        if chunk.choices[0].delta.content:
            break
    await stream.close()
    assert upstream.wait_for_disconnect(timeout=3)
    assert upstream.records[0].chunks_sent < 100


@pytest.mark.asyncio
async def test_first_delay(upstream: FakeUpstream, client: AsyncOpenAI) -> None:
    """Headers arrive at once; the first content waits for first_delay."""
    upstream.enqueue(Script(tokens=["x"], first_delay=0.4))
    start = time.monotonic()
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    headers_at = time.monotonic() - start
    first_content_at = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first_content_at = time.monotonic() - start
    assert first_content_at is not None
    assert headers_at < 0.3  # headers come before the delay
    assert first_content_at >= 0.39


@pytest.mark.asyncio
async def test_script_selection(upstream: FakeUpstream, client: AsyncOpenAI) -> None:
    """scripts_by_model wins, then the FIFO queue, then default_script."""
    upstream.default_script = Script(tokens=["default"])
    upstream.scripts_by_model["special"] = Script(tokens=["special"])
    upstream.enqueue(Script(tokens=["q1"]), Script(tokens=["q2"]))
    results = [
        (await _collect_text(client, "special"))[0],
        (await _collect_text(client))[0],
        (await _collect_text(client, "special"))[0],
        (await _collect_text(client))[0],
        (await _collect_text(client))[0],
    ]
    assert results == ["special", "q1", "special", "q2", "default"]
    assert [r["model"] for r in upstream.requests] == [
        "special",
        MODEL,
        "special",
        MODEL,
        MODEL,
    ]


@pytest.mark.asyncio
async def test_concurrent_streams_by_model(upstream: FakeUpstream, client: AsyncOpenAI) -> None:
    """Concurrent streams each get their model's script."""
    for i in range(5):
        upstream.scripts_by_model[f"m{i}"] = Script(token_count=3, token_text=f"m{i}-{{i}} ")
    texts = await asyncio.gather(*(_collect_text(client, f"m{i}") for i in range(5)))
    assert [t for t, _ in texts] == [f"m{i}-0 m{i}-1 m{i}-2 " for i in range(5)]
    assert upstream.wait_for_completed(5, timeout=2)


@pytest.mark.asyncio
async def test_models_endpoint(upstream: FakeUpstream, client: AsyncOpenAI) -> None:
    """GET /v1/models lists configured models and scripted model names."""
    upstream.scripts_by_model["other"] = Script()
    page = await client.models.list()
    assert [m.id for m in page.data] == [MODEL, "other"]


@pytest.mark.asyncio
async def test_wait_for_requests_async(upstream: FakeUpstream, client: AsyncOpenAI) -> None:
    """The async waiters resolve on arrival and time out otherwise."""
    upstream.enqueue(Script(tokens=["x"], headers_delay=0.2))
    task = asyncio.create_task(_collect_text(client))
    assert await upstream.wait_for_requests_async(1, timeout=3)
    assert not await upstream.wait_for_requests_async(2, timeout=0.05)
    text, _ = await task
    assert text == "x"


def test_stop_with_stalled_request_is_quick() -> None:
    """Stopping the server drops a stalled request quickly."""
    errors: list[BaseException] = []

    with FakeUpstream() as up:
        up.enqueue(Script(stall_after=0))

        def call() -> None:
            try:
                with httpx.stream(
                    "POST",
                    f"{up.base_url}/chat/completions",
                    json={"model": MODEL, "messages": MESSAGES, "stream": True},
                ) as response:
                    for _ in response.iter_bytes():
                        pass
            except httpx.HTTPError as exc:
                errors.append(exc)

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        assert up.wait_until(lambda u: u.records[0].status == 200)
        start = time.monotonic()
    assert time.monotonic() - start < 2
    thread.join(2)
    assert not thread.is_alive()
    assert up.records[0].dropped
    assert errors  # the client saw the connection die
