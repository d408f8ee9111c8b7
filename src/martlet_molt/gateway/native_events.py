"""The native wire formats of a run's events.

`text` is the handoff's format, so its frontend needs no change: each delta is one event whose
text sits in `data:` lines split at every line break, which an EventSource joins back with
`\\n`; the end is `data: [DONE]`, a failure `data: [ERROR] <reason>`. `json` carries every
event kind, with text exact to the character (JSON escapes line breaks). Both give each event
`id: <seq>` so a client resumes with `Last-Event-ID`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from enum import StrEnum

from martlet_molt.core.stream_log import EventKind, RunEvent

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class SseFormat(StrEnum):
    """The wire formats a reader can ask for with `?format=`."""

    TEXT = "text"
    JSON = "json"


def _data_lines(text: str) -> str:
    if "\n" not in text and "\r" not in text:
        return f"data: {text}\n"
    return "".join(f"data: {line}\n" for line in _LINE_BREAK.split(text))


def _one_line(text: str) -> str:
    return _LINE_BREAK.sub(" ", text)


def _end_reason(event: RunEvent) -> str | None:
    """None for a successful end, else the reason readers are given."""
    data = event.data or {}
    if data.get("status") == "completed":
        return None
    return str(data.get("error") or data.get("status") or "failed")


def _looks_like_a_marker(text: str) -> bool:
    return text == "[DONE]" or text.startswith("[ERROR]")


def encode_text(events: Sequence[RunEvent]) -> str:
    """The handoff's format: text deltas, then `[DONE]` or `[ERROR] <reason>`.

    A delta that would read as a marker (the model wrote `[DONE]`) goes out as two events,
    `[` and the rest, so no client mistakes it for the end; joined, the text is unchanged.
    Only the second carries the id, so a resume never skips a part.
    """
    parts: list[str] = []
    for event in events:
        if event.kind is EventKind.DELTA:
            text = event.text
            if _looks_like_a_marker(text):
                parts.append(f"{_data_lines(text[:1])}\n")
                text = text[1:]
            parts.append(f"id: {event.seq}\n{_data_lines(text)}\n")
        elif event.kind is EventKind.END:
            reason = _end_reason(event)
            marker = "[DONE]" if reason is None else f"[ERROR] {_one_line(reason)}"
            parts.append(f"id: {event.seq}\ndata: {marker}\n\n")
    return "".join(parts)


def _json(payload: object) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def encode_json(events: Sequence[RunEvent]) -> str:
    """Every event kind as a named event with a JSON body; the last one is `done`."""
    parts: list[str] = []
    for event in events:
        if event.kind is EventKind.DELTA:
            body = _json({"text": event.text})
            parts.append(f"id: {event.seq}\nevent: delta\ndata: {body}\n\n")
        elif event.kind is EventKind.END:
            data = event.data or {}
            done: dict[str, object] = {
                "status": data.get("status"),
                "usage": data.get("usage"),
                "error": data.get("error"),
            }
            if data.get("finish_reason") is not None:  # `length`: cut at the token limit
                done["finish_reason"] = data["finish_reason"]
            body = _json(done)
            parts.append(f"id: {event.seq}\nevent: done\ndata: {body}\n\n")
        else:
            body = _json(dict(event.data or {}))
            parts.append(f"id: {event.seq}\nevent: {event.kind.value}\ndata: {body}\n\n")
    return "".join(parts)


_ENCODERS: dict[SseFormat, Callable[[Sequence[RunEvent]], str]] = {
    SseFormat.TEXT: encode_text,
    SseFormat.JSON: encode_json,
}


class NativeEncoder:
    """A native format's encoder: each event stands alone, so it needs no state but the
    cursor (the `id:` of each frame is the event's `seq`)."""

    __slots__ = ("_encode", "after")

    def __init__(self, after: int, encode: Callable[[Sequence[RunEvent]], str]) -> None:
        self.after = after
        self._encode = encode

    def opening(self) -> str:
        """Nothing precedes the log's own events."""
        return ""

    def encode(self, events: Sequence[RunEvent]) -> str:
        """The frames of one batch."""
        return self._encode(events)


def native_encoder(wire_format: SseFormat, after: int) -> NativeEncoder:
    """The encoder of a native format, reading the log from `after`."""
    return NativeEncoder(after, _ENCODERS[wire_format])
