"""A run as OpenAI's Response object: what the Responses API returns and what its stream events
carry.

A response *is* a run: its id is the run's id, and its output is the run's stream log. The
request's echo (model, instructions, options, metadata) is saved with the run, so a Response
reads the same from any instance, during the run and after a restart.

Statuses: a pending run is `queued`, a streaming one `in_progress`. A completed run is
`completed`, or `incomplete` (reason `max_output_tokens`) when the upstream stopped at its
token limit (`finish_reason: length`). A cancelled run is `cancelled`. A failed run is
`failed`; so is an interrupted one (the gateway stopped, or another instance took it over),
with `error.code` `server_error` and its partial text kept in the output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from martlet_molt.core.status import RunStatus

TOOL_SERVER_LABEL = "martlet"
"""The `server_label` of the gateway's own tools, shown as MCP calls."""


def message_item_id(run_id: str) -> str:
    """The id of a response's message item: derived, so every reader sees the same one."""
    return "msg_" + run_id.removeprefix("run_")


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """What a response was asked, fixed when it started; every Response object echoes it."""

    id: str
    created_at: int
    model: str
    instructions: str | None = None
    previous_response_id: str | None = None
    background: bool = False
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    metadata: Mapping[str, str] = field(default_factory=dict[str, str])

    @classmethod
    def of_run(
        cls, run_id: str, created_at: datetime, request: Mapping[str, Any] | None, model: str
    ) -> ResponseHead:
        """The head of a run from its saved request; a run the native API started (no saved
        request) reads as a response of the gateway's default `model`."""
        asked = request or {}
        return cls(
            id=run_id,
            created_at=_epoch(created_at),
            model=str(asked.get("model") or model),
            instructions=asked.get("instructions"),
            previous_response_id=asked.get("previous_response_id"),
            background=bool(asked.get("background", False)),
            max_output_tokens=asked.get("max_output_tokens"),
            temperature=asked.get("temperature"),
            top_p=asked.get("top_p"),
            metadata=dict(asked.get("metadata") or {}),
        )


@dataclass(frozen=True, slots=True)
class Ending:
    """How a run ended, in OpenAI's terms (None fields while it runs)."""

    status: str
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None

    @classmethod
    def of(cls, status: RunStatus, error: str | None, finish_reason: str | None) -> Ending:
        """The OpenAI status of a martlet run status (see the module's docstring)."""
        if status is RunStatus.PENDING:
            return cls("queued")
        if status is RunStatus.STREAMING:
            return cls("in_progress")
        if status is RunStatus.COMPLETED:
            if finish_reason == "length":
                return cls("incomplete", incomplete_details={"reason": "max_output_tokens"})
            return cls("completed")
        if status is RunStatus.CANCELLED:
            return cls("cancelled")
        message = error or status.value
        return cls("failed", error={"code": "server_error", "message": message})

    @classmethod
    def of_end_event(cls, data: Mapping[str, Any]) -> Ending:
        """The ending an `end` event tells."""
        return cls.of(RunStatus(data["status"]), data.get("error"), data.get("finish_reason"))


def usage_object(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The upstream's chat usage in the Responses API's terms."""
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def text_part(text: str) -> dict[str, Any]:
    """An `output_text` content part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(run_id: str, text: str | None, status: str) -> dict[str, Any]:
    """The response's message item; `text` None: its content part is not opened yet."""
    content = [] if text is None else [text_part(text)]
    return {
        "id": message_item_id(run_id),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def tool_item(call: Mapping[str, Any], result: Mapping[str, Any] | None) -> dict[str, Any]:
    """A call of one of the gateway's tools, as an MCP call item (its output once known)."""
    return {
        "id": f"mcp_{call.get('id') or ''}",
        "type": "mcp_call",
        "name": str(call.get("name") or ""),
        "arguments": str(call.get("arguments") or ""),
        "server_label": TOOL_SERVER_LABEL,
        "output": None if result is None else str(result.get("content") or ""),
        "error": None,
        "status": "in_progress" if result is None else "completed",
    }


def item_status(ending: Ending) -> str:
    """The status of an output item of a response with this ending."""
    if ending.status == "completed":
        return "completed"
    if ending.status in ("queued", "in_progress"):
        return "in_progress"
    return "incomplete"


def response_object(
    head: ResponseHead,
    ending: Ending,
    *,
    output: list[dict[str, Any]],
    usage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The Response object, as OpenAI's API returns it."""
    return {
        "id": head.id,
        "object": "response",
        "created_at": head.created_at,
        "status": ending.status,
        "background": head.background,
        "error": ending.error,
        "incomplete_details": ending.incomplete_details,
        "instructions": head.instructions,
        "max_output_tokens": head.max_output_tokens,
        "model": head.model,
        "output": output,
        "parallel_tool_calls": False,
        "previous_response_id": head.previous_response_id,
        "store": True,
        "temperature": head.temperature,
        "top_p": head.top_p,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "truncation": "disabled",
        "usage": usage_object(usage),
        "metadata": dict(head.metadata),
    }
