"""A run's stream log as the Responses API's stream events, numbered the same for every reader.

Sequence numbers are derived from the log, never counted per connection, so an event has the
same number live, replayed from memory, or rebuilt from the store:

- 0 `response.created`, 1 `response.in_progress`, 2 `response.output_item.added` (the message
  item), 3 `response.content_part.added`: the opening, sent before the first token;
- the log event with `seq` s is number s + 3: a text delta is `response.output_text.delta`; a
  call of one of the gateway's tools is `response.output_item.added` of an `mcp_call` item,
  and its result that item's `response.output_item.done`;
- the end (with the `error` event before it, if any) is four events numbered on from the first
  of them: `response.output_text.done`, `response.content_part.done`,
  `response.output_item.done` and the terminal event (`response.completed`, `.incomplete` or
  `.failed`; a cancelled response ends with `response.incomplete`, status `cancelled`).

A reader resuming after number N reads the log from its start and skips what it already has:
the tool items' output indexes depend on what came before, and OpenAI's own stream helper
re-reads from the first event in any case. Events are written only past the cursor.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from json.encoder import encode_basestring
from typing import Any

from martlet_molt.core.stream_log import EventKind, RunEvent, StreamLog
from martlet_molt.gateway.openai.response_object import (
    Ending,
    ResponseHead,
    item_status,
    message_item,
    message_item_id,
    response_object,
    text_part,
    tool_item,
)

OPENING = 4
"""Events before the log's first: created, in_progress, the message item, its text part."""

_TERMINAL = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "cancelled": "response.incomplete",
    "failed": "response.failed",
}


def number_of(seq: int) -> int:
    """The sequence number of the log event `seq` (the first of the closing ones, at the end)."""
    return seq + OPENING - 1


def last_number(log: StreamLog) -> int:
    """The newest sequence number a reader could have seen so far."""
    if not log.closed:
        return number_of(log.last_seq) if log.last_seq else OPENING - 1
    tail = log.events_after(max(log.last_seq - 2, 0))
    first_closing = next(e.seq for e in tail if e.kind in (EventKind.ERROR, EventKind.END))
    return number_of(first_closing) + 3


def _frame(kind: str, body: str) -> str:
    return f"event: {kind}\ndata: {body}\n\n"


def _dumps(payload: object) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


# A delta's text as a JSON string: what `json.dumps(text, ensure_ascii=False)` returns, without
# the JSONEncoder that call builds each time (it runs per token and reader; what that costs:
# docs/BENCHMARKS.md, "Measurements behind the code").
_json_string = encode_basestring


class ResponseEvents:
    """One reader's encoder (`gateway/sse.SseEncoder`) of the Responses stream, from the
    sequence number after `starting_after` (-1: from the first)."""

    def __init__(self, log: StreamLog, head: ResponseHead, starting_after: int = -1) -> None:
        self.after = 0
        self._log = log
        self._head = head
        self._skip = starting_after
        self._item_id = message_item_id(head.id)
        self._delta_prefix = (
            '{"type":"response.output_text.delta","item_id":"'
            + self._item_id
            + '","output_index":0,"content_index":0,"logprobs":[],"sequence_number":'
        )
        self._calls: dict[str, tuple[int, dict[str, Any]]] = {}
        self._tools: list[dict[str, Any]] = []
        self._closing_from: int | None = None

    def _event(self, number: int, kind: str, payload: dict[str, Any]) -> str:
        if number <= self._skip:
            return ""
        return _frame(kind, _dumps({"type": kind, "sequence_number": number, **payload}))

    def opening(self) -> str:
        """created, in_progress, the message item and its text part (those past the cursor)."""
        queued = Ending("queued" if self._head.background else "in_progress")
        started = Ending("in_progress")
        return "".join(
            (
                self._event(
                    0,
                    "response.created",
                    {"response": response_object(self._head, queued, output=[])},
                ),
                self._event(
                    1,
                    "response.in_progress",
                    {"response": response_object(self._head, started, output=[])},
                ),
                self._event(
                    2,
                    "response.output_item.added",
                    {"output_index": 0, "item": message_item(self._head.id, None, "in_progress")},
                ),
                self._event(
                    3,
                    "response.content_part.added",
                    {
                        "output_index": 0,
                        "content_index": 0,
                        "item_id": self._item_id,
                        "part": text_part(""),
                    },
                ),
            )
        )

    def encode(self, events: Sequence[RunEvent]) -> str:
        """The stream events of a batch of log events, skipping those at or before the cursor."""
        parts: list[str] = []
        skip, prefix = self._skip, self._delta_prefix
        for event in events:
            number = number_of(event.seq)
            if event.kind is EventKind.DELTA:
                if number > skip:
                    text = _json_string(event.text)
                    parts.append(
                        f"event: response.output_text.delta\ndata: {prefix}{number},"
                        f'"delta":{text}}}\n\n'
                    )
            elif event.kind is EventKind.TOOL_CALL:
                parts.append(self._tool_call(number, dict(event.data or {})))
            elif event.kind is EventKind.TOOL_RESULT:
                parts.append(self._tool_result(number, dict(event.data or {})))
            elif event.kind is EventKind.ERROR:
                self._closing_from = number
            elif event.kind is EventKind.END:
                parts.append(self._closing(dict(event.data or {}), self._closing_from or number))
        return "".join(parts)

    def _tool_call(self, number: int, call: dict[str, Any]) -> str:
        index = len(self._tools) + 1
        item = tool_item(call, None)
        self._calls[str(call.get("id"))] = (index, call)
        self._tools.append(item)
        return self._event(
            number, "response.output_item.added", {"output_index": index, "item": item}
        )

    def _tool_result(self, number: int, result: dict[str, Any]) -> str:
        found = self._calls.get(str(result.get("tool_call_id")))
        if found is None:  # a result without its call: nothing to attach it to
            return ""
        index, call = found
        item = tool_item(call, result)
        self._tools[index - 1] = item
        return self._event(
            number, "response.output_item.done", {"output_index": index, "item": item}
        )

    def _closing(self, end: dict[str, Any], first: int) -> str:
        ending = Ending.of_end_event(end)
        text = self._log.full_content
        status = item_status(ending)
        where = {"output_index": 0, "content_index": 0, "item_id": self._item_id}
        output = [message_item(self._head.id, text, status), *self._tools]
        final = response_object(self._head, ending, output=output, usage=end.get("usage"))
        return "".join(
            (
                self._event(
                    first, "response.output_text.done", {**where, "text": text, "logprobs": []}
                ),
                self._event(
                    first + 1, "response.content_part.done", {**where, "part": text_part(text)}
                ),
                self._event(
                    first + 2,
                    "response.output_item.done",
                    {"output_index": 0, "item": output[0]},
                ),
                self._event(first + 3, _TERMINAL[ending.status], {"response": final}),
            )
        )


def response_snapshot(log: StreamLog, head: ResponseHead) -> dict[str, Any]:
    """The Response object of a run as it stands now (what polling returns)."""
    tools: dict[str, dict[str, Any]] = {}
    end: dict[str, Any] | None = None
    for event in log.events_after(0):
        data = dict(event.data or {})
        if event.kind is EventKind.TOOL_CALL:
            tools[str(data.get("id"))] = tool_item(data, None)
        elif event.kind is EventKind.TOOL_RESULT:
            call = tools.get(str(data.get("tool_call_id")))
            if call is not None:
                call.update(output=str(data.get("content") or ""), status="completed")
        elif event.kind is EventKind.END:
            end = data
    ending = Ending.of(log.status, log.error, None) if end is None else Ending.of_end_event(end)
    if ending.status == "queued":
        return response_object(head, ending, output=[])
    message = message_item(head.id, log.full_content, item_status(ending))
    usage = None if end is None else end.get("usage")
    return response_object(head, ending, output=[message, *tools.values()], usage=usage)
