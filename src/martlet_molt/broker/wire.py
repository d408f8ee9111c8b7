"""How a run's events are stored in Redis: the keys, the entry ids and the entry payload.

Per run, two keys under the deployment's prefix:

- `<prefix>:run:<run_id>:log`, a Redis stream. One entry holds a batch of consecutive events
  `a..b`; its id is the explicit `0-b`, so `XRANGE log 0-(n+1) +` starts at the entry holding
  event `n+1`, and a batch sent again after a failure is recognised by id (appends are
  idempotent). Fields: `f` = `a`, `e` = a JSON array of the events in order.
- `<prefix>:run:<run_id>:meta`, a hash: `session_id`, `principal`, `owner`, and `ended`
  (`owner` when the owner appended the end event, `taken` when another instance ended it).

An event in `e` is compact: a plain delta is its text as a JSON string; any other event is an
object `{"k": kind, "t": text, "d": data}` (`t` only for a delta that carries data). Text goes
out as UTF-8 with lone surrogates passed through, so it reads back exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from martlet_molt.core.stream_log import EventKind, RunEvent

_ENCODING = "utf-8"
_ERRORS = "surrogatepass"  # a lone surrogate in a model's text survives the round trip

ENDED_BY_OWNER = "owner"
ENDED_BY_TAKEOVER = "taken"


@dataclass(frozen=True, slots=True)
class RunKeys:
    """The Redis keys of one run."""

    log: str
    meta: str


def run_keys(prefix: str, run_id: str) -> RunKeys:
    """The keys of `run_id` under a deployment's `prefix`."""
    return RunKeys(log=f"{prefix}:run:{run_id}:log", meta=f"{prefix}:run:{run_id}:meta")


def cancel_channel(prefix: str) -> str:
    """The pub/sub channel every instance of a deployment hears cancel requests on."""
    return f"{prefix}:cancel"


def entry_id(seq: int) -> str:
    """The stream id of the entry whose last event is `seq`."""
    return f"0-{seq}"


def seq_of(entry: bytes | str) -> int:
    """The last event's `seq` in the entry with this id."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    return int(text.partition("-")[2])


def _dumps(payload: object) -> bytes:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)
    return text.encode(_ENCODING, _ERRORS)


def encode_event(event: RunEvent) -> bytes:
    """One event as the JSON item that goes into an entry's `e` array."""
    if event.kind is EventKind.DELTA and event.data is None:
        return _dumps(event.text)
    item: dict[str, Any] = {"k": event.kind.value}
    if event.kind is EventKind.DELTA:
        item["t"] = event.text
    if event.data is not None:
        item["d"] = dict(event.data)
    return _dumps(item)


def encode_end(*, status: str, error: str | None) -> list[bytes]:
    """The events another instance appends to end a run it took over: an `error` event if
    there is an error, then the `end` event (no usage: the owner's count is lost with it)."""
    items: list[bytes] = []
    if error is not None:
        items.append(_dumps({"k": EventKind.ERROR.value, "d": {"message": error}}))
    end = {"status": status, "usage": None, "error": error}
    items.append(_dumps({"k": EventKind.END.value, "d": end}))
    return items


def _decode_item(seq: int, item: object) -> RunEvent:
    if isinstance(item, str):
        return RunEvent(seq, EventKind.DELTA, item)
    fields = cast("Mapping[str, Any]", item)
    data = cast("Mapping[str, Any] | None", fields.get("d"))
    return RunEvent(seq, EventKind(fields["k"]), str(fields.get("t", "")), data)


def decode_entry(entry: bytes | str, fields: Mapping[bytes, bytes]) -> list[RunEvent]:
    """The events of one stream entry, numbered from its `f` field; raises `ValueError` if
    the entry is not one this module wrote."""
    first = int(fields[b"f"])
    items = cast("Sequence[object]", json.loads(fields[b"e"].decode(_ENCODING, _ERRORS)))
    if first + len(items) - 1 != seq_of(entry):
        raise ValueError(f"entry {entry!r} holds {len(items)} events from {first}")
    return [_decode_item(first + offset, item) for offset, item in enumerate(items)]
