"""The provider reads the upstream's event stream itself; these pin its parsing down."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from martlet_molt.errors import ProviderError, UpstreamMalformed
from martlet_molt.providers.base import FinishDelta, TextDelta, ToolCallDelta, UsageDelta
from martlet_molt.providers.openai import data_payloads, parse_chunk


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _payloads(*parts: bytes) -> list[bytes]:
    return [payload async for payload in data_payloads(_chunks(*parts))]


@pytest.mark.asyncio
async def test_events_split_anywhere_across_reads() -> None:
    body = b'data: {"a":1}\n\ndata: {"b":2}\r\n\r\n: comment\n\ndata: [DONE]\n\n'
    whole = await _payloads(body)
    assert whole == [b'{"a":1}', b'{"b":2}', b"[DONE]"]
    for cut in range(1, len(body)):
        assert await _payloads(body[:cut], body[cut:]) == whole


@pytest.mark.asyncio
async def test_unicode_line_separators_inside_json_are_not_line_ends() -> None:
    text = "a\u2028b\u2029c\x85d\x0be"
    line = json.dumps({"choices": [{"delta": {"content": text}}]}, ensure_ascii=False)
    (payload,) = await _payloads(f"data: {line}\n\n".encode())
    assert parse_chunk(payload) == [TextDelta(text)]


@pytest.mark.asyncio
async def test_multi_line_data_and_a_missing_final_blank_line() -> None:
    assert await _payloads(b"data: x\ndata:y\n\nevent: e\ndata: last") == [b"x\ny", b"last"]


def test_a_chunk_gives_text_tool_fragments_usage_and_finish() -> None:
    chunk = {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "content": "hi",
                    "tool_calls": [
                        {"index": 1, "id": "c1", "function": {"name": "calc", "arguments": "{"}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    assert parse_chunk(json.dumps(chunk).encode()) == [
        UsageDelta(3, 2, 5),
        TextDelta("hi"),
        ToolCallDelta(index=1, call_id="c1", name="calc", arguments="{"),
        FinishDelta("tool_calls"),
    ]


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (b'{"choices": [{"delta": {"content": "\\ud83d"}}]}', "\ud83d"),  # half an emoji
        (b'{"choices": [{"delta": {"content": "x"}}], "temperature": NaN}', "x"),
        (b'\xef\xbb\xbf{"choices": [{"delta": {"content": "y"}}]}', "y"),  # byte order mark
    ],
)
def test_json_the_standard_library_accepts_still_parses(payload: bytes, text: str) -> None:
    assert parse_chunk(payload) == [TextDelta(text)]


@pytest.mark.parametrize(
    ("payload", "error_class", "reason"),
    [
        (b"{not json", UpstreamMalformed, "^upstream sent a malformed chunk: Expecting"),
        (b"[1, 2]", UpstreamMalformed, "^upstream sent a malformed chunk: not a JSON object$"),
        (b'{"choices": [1]}', UpstreamMalformed, "^upstream sent a malformed chunk: Attribute"),
        (b'{"usage": {"prompt_tokens": "x"}}', UpstreamMalformed, "malformed chunk: ValueError"),
        (b'{"error": {"message": "overloaded"}}', ProviderError, "^upstream error: overloaded$"),
    ],
)
def test_bad_chunks_fail_clearly(
    payload: bytes, error_class: type[ProviderError], reason: str
) -> None:
    with pytest.raises(ProviderError, match=reason) as caught:
        parse_chunk(payload)
    assert type(caught.value) is error_class
