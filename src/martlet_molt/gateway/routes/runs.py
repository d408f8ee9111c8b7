"""Runs: their state, their events from any point (resume), and cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query

from martlet_molt.core.run_view import RunView
from martlet_molt.errors import InvalidRequest
from martlet_molt.gateway.native_events import SseFormat
from martlet_molt.gateway.routes.deps import (
    ERRORS,
    CurrentSettings,
    Principal,
    Runs,
    StreamPrincipal,
    WireFormat,
)
from martlet_molt.gateway.schemas import RunResponse
from martlet_molt.gateway.sse import SseResponse, sse_response

MAX_SEQ_DIGITS = 18
"""A `seq` fits in 18 digits; longer ids are rejected before any conversion."""

router = APIRouter(responses=ERRORS)


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


def resume_point(after: int | None, last_event_id: str | None) -> int:
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
    point = resume_point(after, last_event_id)
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
