"""The HTTP API. Every handler is thin: it validates, asks the run manager or the store, and
shapes the answer. Streaming handlers only read a run's log; they never own the run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST

from martlet_molt.config import Settings
from martlet_molt.core.run_view import RunView
from martlet_molt.core.runs import RunManager
from martlet_molt.core.session import SESSION_ID_PATTERN
from martlet_molt.core.stream_log import StreamLog
from martlet_molt.errors import InvalidRequest, ServiceUnavailable, SessionNotFound
from martlet_molt.gateway.auth import require_principal, require_stream_principal
from martlet_molt.gateway.schemas import (
    ChatRequest,
    ChatResponse,
    ErrorResponse,
    HealthResponse,
    MessageResponse,
    ReadyResponse,
    RunResponse,
    SessionDetail,
    SessionPage,
    SessionSummary,
)
from martlet_molt.gateway.sse import SseFormat, SseResponse, sse_response

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 409, 413, 422, 429, 503)
}

MAX_SEQ_DIGITS = 18
"""A `seq` fits in 18 digits; longer ids are rejected before any conversion."""

READY_TIMEOUT_SECONDS = 5.0
"""`/readyz` answers 503 when the store does not answer within this time."""

router = APIRouter(responses=ERRORS)


# Dependencies are `async def`: FastAPI runs a plain `def` dependency in a worker thread, a
# thread hop on every request for what is an attribute lookup.


async def get_runs(request: Request) -> RunManager:
    """The app's run manager."""
    runs: RunManager = request.app.state.runs
    return runs


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


Runs = Annotated[RunManager, Depends(get_runs)]
CurrentSettings = Annotated[Settings, Depends(get_settings)]
Principal = Annotated[str, Depends(require_principal)]
"""Who is asking: every session and run belongs to one principal (`gateway/auth.py`)."""
StreamPrincipal = Annotated[str, Depends(require_stream_principal)]
"""The same, also taking `?api_key=` (for EventSource); only for GET stream endpoints."""
WireFormat = Annotated[SseFormat, Query(alias="format", description="`text` or `json`.")]
SessionId = Annotated[
    str, Path(pattern=SESSION_ID_PATTERN, description="1-128 of `A-Z a-z 0-9 _ . -`.")
]
"""A session id in a path: any other shape gets 422 before the store is asked."""


async def _start(
    body: ChatRequest, runs: RunManager, settings: Settings, principal: str
) -> StreamLog:
    if len(body.message) > settings.max_message_chars:
        raise InvalidRequest(
            f"message is {len(body.message)} characters; the limit is {settings.max_message_chars}"
        )
    return await runs.start(
        message=body.message,
        principal=principal,
        session_id=body.session_id,
        client_request_id=body.client_request_id,
    )


@router.post("/chat", response_model=ChatResponse)
async def chat(
    body: ChatRequest, runs: Runs, settings: CurrentSettings, principal: Principal
) -> ChatResponse:
    """Answer a message and return the whole reply. The run goes on (and is saved) even if
    this request is abandoned."""
    log = await _start(body, runs, settings, principal)
    while not log.closed:
        await log.wait(log.last_seq)
    return ChatResponse(
        session_id=log.session_id,
        run_id=log.run_id,
        reply=log.full_content,
        status=log.status,
        error=log.error,
    )


@router.post("/chat/stream", response_class=SseResponse)
async def chat_stream(
    body: ChatRequest,
    runs: Runs,
    settings: CurrentSettings,
    principal: Principal,
    wire_format: WireFormat = SseFormat.TEXT,
) -> SseResponse:
    """Answer a message as a stream. The response only reads the run: dropping it loses
    nothing, and `GET /runs/{run_id}/stream` picks up where it left off."""
    log = await _start(body, runs, settings, principal)
    return sse_response(
        log,
        after=0,
        wire_format=wire_format,
        ping_seconds=settings.sse_ping_seconds,
        headers={"X-Session-Id": log.session_id, "X-Run-Id": log.run_id},
        metrics=runs.metrics,
    )


def _run_response(view: RunView) -> RunResponse:
    return RunResponse(
        run_id=view.run_id,
        session_id=view.session_id,
        status=view.status,
        content=view.content,
        error=view.error,
        created_at=view.created_at,
        updated_at=view.updated_at,
        completed_at=view.completed_at,
        usage=view.usage,
    )


@router.get("/runs/{run_id}", response_model=RunResponse)
async def get_run(run_id: str, runs: Runs, principal: Principal) -> RunResponse:
    """A run's status and its reply so far."""
    return _run_response(await runs.get_run(run_id, principal))


def _resume_point(after: int | None, last_event_id: str | None) -> int:
    """Where a reader resumes: the later of `?after=` and `Last-Event-ID`."""
    point = after or 0
    if last_event_id is not None and last_event_id.strip():
        value = last_event_id.strip()
        if not (value.isascii() and value.isdigit() and len(value) <= MAX_SEQ_DIGITS):
            raise InvalidRequest(f"Last-Event-ID must be a non-negative integer, got {value!r}")
        point = max(point, int(value))
    return point


@router.get("/runs/{run_id}/stream", response_class=SseResponse)
async def stream_run(
    run_id: str,
    runs: Runs,
    settings: CurrentSettings,
    principal: StreamPrincipal,
    wire_format: WireFormat = SseFormat.TEXT,
    after: Annotated[int | None, Query(ge=0, description="Send events with seq > after.")] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> SseResponse:
    """A run's events: replayed from `after` (or `Last-Event-ID`), then live, until its end."""
    point = _resume_point(after, last_event_id)
    log = await runs.get_log(run_id, principal, point)
    if point > log.last_seq:
        raise InvalidRequest(
            f"cannot resume after event {point}: run {run_id} has {log.last_seq} events so far",
            last_seq=log.last_seq,
        )
    return sse_response(
        log,
        after=point,
        wire_format=wire_format,
        ping_seconds=settings.sse_ping_seconds,
        headers={"X-Session-Id": log.session_id, "X-Run-Id": log.run_id},
        metrics=runs.metrics,
    )


@router.post("/runs/{run_id}/cancel", response_model=RunResponse)
async def cancel_run(run_id: str, runs: Runs, principal: Principal) -> RunResponse:
    """Stop a run: the upstream request is closed and the partial reply saved. Cancelling a
    finished run returns it unchanged."""
    return _run_response(await runs.cancel(run_id, principal))


@router.get("/sessions", response_model=SessionPage)
async def list_sessions(
    runs: Runs,
    principal: Principal,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,  # a database integer
) -> SessionPage:
    """The caller's sessions, most recently active first."""
    sessions, total = await runs.store.list_sessions(
        principal=principal, limit=limit, offset=offset
    )
    active = await runs.active_run_ids([s.session_id for s in sessions])
    return SessionPage(
        sessions=[
            SessionSummary(
                session_id=s.session_id,
                created_at=s.created_at,
                updated_at=s.updated_at,
                active_run_id=active.get(s.session_id),
            )
            for s in sessions
        ],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/sessions/{session_id}", response_model=SessionDetail)
async def get_session(session_id: SessionId, runs: Runs, principal: Principal) -> SessionDetail:
    """A session's whole history, and its active run if one is streaming."""
    session = await runs.store.get_session(session_id)
    if session is None or session.principal != principal:
        raise SessionNotFound(f"session {session_id} not found")
    messages = await runs.store.list_messages(session_id)
    active = await runs.active_run_ids([session_id])
    return SessionDetail(
        session_id=session.session_id,
        created_at=session.created_at,
        updated_at=session.updated_at,
        active_run_id=active.get(session_id),
        messages=[
            MessageResponse(
                role=m.role,
                content=m.content,
                status=m.status,
                run_id=m.run_id,
                created_at=m.created_at,
                tool_calls=m.tool_calls,
                tool_call_id=m.tool_call_id,
                name=m.name,
            )
            for m in messages
        ],
    )


@router.delete("/sessions/{session_id}", status_code=204)
async def delete_session(session_id: SessionId, runs: Runs, principal: Principal) -> Response:
    """Delete a session, cancelling its active run first."""
    await runs.delete_session(session_id, principal)
    return Response(status_code=204)


@router.get("/healthz", response_model=HealthResponse)
async def healthz(runs: Runs) -> HealthResponse:
    """The process is up; says which provider and model answer."""
    provider = runs.provider
    return HealthResponse(
        status="ok",
        provider=provider.name if provider else None,
        model=provider.model if provider else None,
    )


async def _answers(ping: Callable[[], Awaitable[None]], what: str, **details: str) -> None:
    """Raise 503 naming `what` unless `ping` succeeds within `READY_TIMEOUT_SECONDS`."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await ping()
    except Exception as exc:
        logger.warning("readiness check: {} did not answer: {!r}", what, exc)
        raise ServiceUnavailable(
            f"{what} cannot be reached", reason=type(exc).__name__, **details
        ) from exc


@router.get("/readyz", response_model=ReadyResponse)
async def readyz(runs: Runs) -> ReadyResponse:
    """Ready to serve: the store answers, and with several instances Redis too (else 503).
    Open, like `/healthz`."""
    await _answers(runs.store.ping, "the store", store="unavailable")
    if runs.shared:
        await _answers(runs.broker.ping, "the shared stream log (Redis)", broker="unavailable")
    provider = runs.provider
    return ReadyResponse(
        status="ready",
        store="ok",
        provider=provider.name if provider else None,
        model=provider.model if provider else None,
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(runs: Runs, _principal: Principal) -> Response:
    """Prometheus metrics; behind the same API key as the rest of the API."""
    return Response(runs.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
