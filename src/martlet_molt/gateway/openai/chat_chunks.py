"""A run's stream log as Chat Completions: `chat.completion.chunk` events in OpenAI's exact wire
format, and the whole `chat.completion` object.

The generation is a background run; the stream only reads its log. Each chunk carries the
log's `seq` as its SSE `id:`, so a client that lost the stream gets the rest, in the same
format, from `GET /v1/chat/completions/{id}/chunks?after=N` (or with `Last-Event-ID`).

The first chunk (only when reading from the start) gives the role; each text delta is a chunk;
the end is a chunk with `finish_reason`, then (with `stream_options.include_usage`) a usage
chunk with no choices, then `data: [DONE]`. A run that failed, was interrupted or cancelled
ends with an `error` object instead, which OpenAI's SDKs raise as an API error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from martlet_molt.core.stream_log import EventKind, RunEvent


@dataclass(frozen=True, slots=True)
class CompletionHead:
    """What every chunk of one completion repeats."""

    id: str
    created: int
    model: str


def _dumps(payload: object) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


# A delta's text as a JSON string: what `json.dumps(text, ensure_ascii=False)` returns, without
# the JSONEncoder that call builds each time (it runs per token and reader; what that costs:
# docs/BENCHMARKS.md, "Measurements behind the code").
_json_string = encode_basestring


def chat_usage(usage: Mapping[str, Any] | None) -> dict[str, int] | None:
    """The upstream's usage, as Chat Completions reports it."""
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    total = int(usage.get("total_tokens") or prompt + completion)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def end_error(end: Mapping[str, Any]) -> dict[str, Any] | None:
    """The error object of a run that did not complete (None if it did)."""
    status = end.get("status")
    if status == "completed":
        return None
    if status == "cancelled":
        return {
            "message": "the run was cancelled",
            "type": "cancelled",
            "param": None,
            "code": "cancelled",
        }
    message = str(end.get("error") or status or "failed")
    return {"message": message, "type": "server_error", "param": None, "code": str(status)}


class ChatChunks:
    """One reader's encoder (`gateway/sse.SseEncoder`) of a completion's chunks, from `after`."""

    def __init__(
        self, head: CompletionHead, *, after: int = 0, include_usage: bool = False
    ) -> None:
        self.after = after
        self._head = head
        self._include_usage = include_usage
        self._prefix = (
            '{"id":"'
            + head.id
            + '","object":"chat.completion.chunk","created":'
            + str(head.created)
            + ',"model":'
            + _dumps(head.model)
            + ',"choices":'
        )

    def _chunk(self, choices: str, extra: str = "") -> str:
        return f"{self._prefix}{choices}{extra}}}"

    def opening(self) -> str:
        """The role chunk, for a reader starting at the beginning."""
        if self.after:
            return ""
        delta = '[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]'
        return f"data: {self._chunk(delta)}\n\n"

    def encode(self, events: Sequence[RunEvent]) -> str:
        """The chunks of a batch of log events (tool events have none)."""
        parts: list[str] = []
        for event in events:
            if event.kind is EventKind.DELTA:
                text = _json_string(event.text)
                choices = f'[{{"index":0,"delta":{{"content":{text}}},"finish_reason":null}}]'
                parts.append(f"id: {event.seq}\ndata: {self._chunk(choices)}\n\n")
            elif event.kind is EventKind.END:
                parts.append(self._end(event.seq, dict(event.data or {})))
        return "".join(parts)

    def _end(self, seq: int, end: dict[str, Any]) -> str:
        error = end_error(end)
        if error is not None:
            return f"id: {seq}\ndata: {_dumps({'error': error})}\n\n"
        reason = _dumps(end.get("finish_reason") or "stop")
        finish = '[{"index":0,"delta":{},"finish_reason":' + reason + "}]"
        frames = [f"id: {seq}\ndata: {self._chunk(finish)}\n\n"]
        if self._include_usage:
            usage = chat_usage(end.get("usage")) or chat_usage({"total_tokens": 0})
            usage_chunk = self._chunk("[]", ',"usage":' + _dumps(usage))
            frames.append(f"data: {usage_chunk}\n\n")
        frames.append("data: [DONE]\n\n")
        return "".join(frames)


def completion_object(head: CompletionHead, text: str, end: Mapping[str, Any]) -> dict[str, Any]:
    """The whole `chat.completion` of a run that completed."""
    return {
        "id": head.id,
        "object": "chat.completion",
        "created": head.created,
        "model": head.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": end.get("finish_reason") or "stop",
                "logprobs": None,
            }
        ],
        "usage": chat_usage(end.get("usage")),
    }
