"""Request and response bodies at the HTTP edge (pydantic; plain dataclasses live inside)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from martlet_molt.core.session import SESSION_ID_PATTERN
from martlet_molt.core.status import RunStatus
from martlet_molt.core.titles import MAX_TITLE_CHARS, checked_title

CLIENT_REQUEST_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"


class ChatRequest(BaseModel):
    """A user message for a session (a new session when `session_id` is omitted)."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, description="The user's message.")
    session_id: str | None = Field(
        default=None, pattern=SESSION_ID_PATTERN, description="Omit to start a new session."
    )
    client_request_id: str | None = Field(
        default=None,
        pattern=CLIENT_REQUEST_ID_PATTERN,
        description="Retrying with the same id attaches to the run it started.",
    )

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("message must not be blank")
        return value


class ChatResponse(BaseModel):
    """The outcome of a whole run, for clients that do not stream."""

    session_id: str
    run_id: str
    reply: str
    status: RunStatus
    error: str | None = None


class RunResponse(BaseModel):
    """A run's state and its reply so far."""

    run_id: str
    session_id: str
    status: RunStatus
    content: str
    error: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    usage: dict[str, Any] | None


class MessageResponse(BaseModel):
    """One saved message of a session."""

    role: str
    content: str
    status: RunStatus
    run_id: str | None
    created_at: datetime
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    tool_status: str | None = None
    """A tool result's outcome: `done` or `failed`."""
    duration_ms: int | None = None
    """How long the tool call took."""


class SessionSummary(BaseModel):
    """A session in a listing."""

    session_id: str
    title: str | None = Field(
        description="From its first user message, or as renamed; null before any user message."
    )
    created_at: datetime
    updated_at: datetime
    active_run_id: str | None


class SessionHit(SessionSummary):
    """A session a search found, with the passage that matched best."""

    snippet: str = Field(description="The passage, plain text on one line.")
    highlights: list[tuple[int, int]] = Field(
        description="[start, end) offsets (in characters) of the matched words in `snippet`."
    )
    matched: Literal["title", "message"] = Field(description="Where the passage comes from.")


class SessionUpdate(BaseModel):
    """A change to a session: its new title."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(
        description=f"1-{MAX_TITLE_CHARS} characters on one line (surrounding blanks dropped)."
    )

    @field_validator("title")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return checked_title(value)


class SessionDetail(SessionSummary):
    """A session with its whole history."""

    messages: list[MessageResponse]


class SessionExport(BaseModel):
    """A session as a JSON file: everything the API shows of it, to keep or move elsewhere."""

    format: Literal["martlet_molt.session"] = "martlet_molt.session"
    version: Literal[1] = 1
    exported_at: datetime
    session: SessionSummary
    messages: list[MessageResponse]


class SessionPage(BaseModel):
    """One page of sessions."""

    sessions: list[SessionSummary]
    total: int
    limit: int
    offset: int


class SessionSearchPage(BaseModel):
    """One page of the sessions a search found, best first, and how many it found."""

    query: str
    sessions: list[SessionHit]
    total: int
    limit: int
    offset: int


class ErrorDetail(BaseModel):
    """What went wrong, for humans and programs."""

    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    """Every error answer has this shape."""

    error: ErrorDetail


class OpenAIErrorDetail(BaseModel):
    """OpenAI's error body, under `/v1/`."""

    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(BaseModel):
    """Every error answer under `/v1/` has OpenAI's shape."""

    error: OpenAIErrorDetail


class HealthResponse(BaseModel):
    """Liveness and what answers."""

    status: str
    provider: str | None
    model: str | None


class ReadyResponse(BaseModel):
    """Readiness: the store answers; and what answers chat."""

    status: str
    store: str
    provider: str | None
    model: str | None
    unavailable_tool_servers: list[str] = []
    """MCP servers that are down: their tools are not offered until they come back."""
