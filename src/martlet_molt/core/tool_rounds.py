"""Tool rounds as the session keeps them: the assistant's calls, then one result per call.

A run that called tools adds more than its reply to the session. Each round is saved as an
assistant message carrying OpenAI's `tool_calls` and a `tool` message per call, so that the
next turn's history is valid for any OpenAI-compatible model. A call still running when its run
ended gets the `UNANSWERED` error as its result: every call needs one for the conversation to
go on.

Two writers build these messages: the agent, from what it holds when its run ends, and
whoever ends a run its process left behind (start-up recovery, a lease takeover), from the
run's checkpointed replay index (`saved_run_messages`). Both give the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from martlet_molt.core.status import RunStatus
from martlet_molt.core.tools import ToolOutcome
from martlet_molt.store.base import JsonObject, NewMessage

UNANSWERED = "error: the run ended before this tool returned"
"""The saved result of a call still running when its run ended."""


def round_messages(
    run_id: str,
    text: str,
    tool_calls: Sequence[JsonObject],
    results: Mapping[str, ToolOutcome],
) -> list[NewMessage]:
    """One round as saved: the assistant's text and calls (OpenAI's `tool_calls` shape), then
    each call's result in call order."""
    messages = [NewMessage("assistant", text, run_id=run_id, tool_calls=list(tool_calls))]
    for call in tool_calls:
        call_id = str(call["id"])
        outcome = results.get(call_id)
        messages.append(
            NewMessage(
                "tool",
                UNANSWERED if outcome is None else outcome.content,
                run_id=run_id,
                tool_call_id=call_id,
                name=str(call["function"]["name"]),
                tool_status="failed" if outcome is None or outcome.failed else "done",
                duration_ms=None if outcome is None else round(outcome.seconds * 1000),
            )
        )
    return messages


def saved_run_messages(
    run_id: str, content: str, index: Sequence[Any], status: RunStatus
) -> list[NewMessage]:
    """Everything an unfinished run adds to its session, rebuilt from its checkpoint: its
    rounds (calls with the results that came back), then the reply since the last round.

    `index` is the run's replay index (see `core.local_log`): an int is that many
    characters of `content`, an object any other event."""
    messages: list[NewMessage] = []
    offset = round_start = 0
    calls: list[JsonObject] = []
    results: dict[str, ToolOutcome] = {}

    def close_round() -> None:
        nonlocal round_start
        if calls:
            text = content[round_start:offset]
            messages.extend(round_messages(run_id, text, calls, results))
            calls.clear()
            results.clear()
            round_start = offset

    for item in index:
        if isinstance(item, int):
            if calls:  # text after a round's calls belongs to the next round
                close_round()
            offset += item
            continue
        if not isinstance(item, Mapping):
            continue
        entry = cast("Mapping[str, Any]", item)
        data = cast("Mapping[str, Any]", entry.get("data") or {})
        if entry.get("kind") == "tool_call":
            if calls and len(results) == len(calls):  # a new round with no text before it
                close_round()
            calls.append(
                {
                    "id": str(data.get("id", "")),
                    "type": "function",
                    "function": {
                        "name": str(data.get("name", "")),
                        "arguments": str(data.get("arguments", "")),
                    },
                }
            )
        elif entry.get("kind") == "tool_result":
            results[str(data.get("tool_call_id", ""))] = ToolOutcome(
                content=str(data.get("content", "")),
                failed=data.get("status") == "failed",
                seconds=float(data.get("duration_ms") or 0) / 1000,
            )
    close_round()
    messages.append(NewMessage("assistant", content[round_start:], status=status, run_id=run_id))
    return messages
