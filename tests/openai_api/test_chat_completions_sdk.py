"""Chat Completions through OpenAI's Python SDK, made durable: a dropped stream loses nothing,
the run completes and is saved, and the rest comes back in the same chunk format."""

from __future__ import annotations

import httpx
import pytest
from openai import APIError, OpenAI, Stream
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from martlet_molt.testing import FakeUpstream
from tests.conftest import script
from tests.gateway_server import GatewayServer
from tests.openai_api.conftest import TIMEOUT, poll_until_final

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You count."},
    {"role": "user", "content": "Count to three."},
    {"role": "assistant", "content": "One, two, three."},
    {"role": "user", "content": "Now to forty."},
]


def _text(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_a_plain_completion_and_its_saved_conversation(
    sdk: OpenAI, gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, tokens=["Hé", "llo\n", "😀"], prompt_tokens=9)
    raw = sdk.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, temperature=0.2, max_completion_tokens=50
    )
    completion = raw.parse()
    run_id = raw.headers["x-run-id"]
    assert completion.id == run_id
    assert completion.choices[0].message.content == sent.text
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 9
    body = [r.body for r in upstream.records if r.model == model][-1]
    assert body["messages"] == MESSAGES  # the whole list, and no system prompt of ours
    assert (body["temperature"], body["max_tokens"]) == (0.2, 50)
    session = httpx.get(
        f"{gateway.url}/sessions/{raw.headers['x-session-id']}", timeout=TIMEOUT
    ).json()
    saved = [(m["role"], m["content"]) for m in session["messages"]]
    asked = [(m["role"], m.get("content")) for m in MESSAGES]
    assert saved == [*asked, ("assistant", sent.text)]


def test_a_dropped_stream_completes_is_saved_and_resumes_in_the_same_format(
    sdk: OpenAI, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=40, delay=0.01)
    first: list[ChatCompletionChunk] = []
    with sdk.chat.completions.with_streaming_response.create(
        model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ) as response:
        run_id = response.headers["x-run-id"]
        stream = response.parse()
        for chunk in stream:
            first.append(chunk)
            if len(first) == 6:  # the role chunk, then five deltas: drop
                break
    assert first[0].choices[0].delta.role == "assistant"
    assert _text(first) == "".join(sent.chunks[:5])

    done = poll_until_final(sdk, run_id)  # a completion is a response too
    assert done.status == "completed"
    assert done.output_text == sent.text

    rest = sdk.get(
        f"/chat/completions/{run_id}/chunks",
        options={"params": {"after": 5, "include_usage": True}},
        cast_to=ChatCompletionChunk,
        stream=True,
        stream_cls=Stream[ChatCompletionChunk],
    )
    chunks = list(rest)
    assert _text(first) + _text(chunks) == sent.text
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 40
    assert {c.id for c in first + chunks} == {run_id}


def test_a_streamed_completion_is_in_openai_s_chunk_format(
    sdk: OpenAI, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, tokens=["a", "b\r\n", "[DONE]"])
    chunks = list(
        sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], stream=True
        )
    )
    assert _text(chunks) == sent.text
    assert all(c.object == "chat.completion.chunk" and c.model == model for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # only with stream_options.include_usage


def test_an_upstream_failure_reaches_the_sdk_as_an_api_error(
    sdk: OpenAI, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, token_count=10, fail_after=3)
    received: list[ChatCompletionChunk] = []
    stream = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(APIError, match="dropped"):
        received.extend(stream)
    assert _text(received) == "".join(f"tok{i} " for i in range(3))
    with pytest.raises(APIError, match="dropped"):
        sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])


def test_unsupported_chat_fields_are_refused_by_name(sdk: OpenAI, model: str) -> None:
    with pytest.raises(APIError) as refused:
        sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], n=2)
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["param"] == "n"
