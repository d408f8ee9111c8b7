"""Sessions: a principal's conversations, each with its whole history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from martlet_molt.errors import SessionNotFound
from martlet_molt.gateway.routes.deps import ERRORS, Principal, Runs, SessionId
from martlet_molt.gateway.schemas import (
    MessageResponse,
    SessionDetail,
    SessionPage,
    SessionSummary,
)

router = APIRouter(responses=ERRORS)


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
                tool_status=m.tool_status,
                duration_ms=m.duration_ms,
            )
            for m in messages
        ],
    )


@router.delete("/sessions/{session_id}", status_code=204)
async def delete_session(session_id: SessionId, runs: Runs, principal: Principal) -> Response:
    """Delete a session, cancelling its active run first."""
    await runs.delete_session(session_id, principal)
    return Response(status_code=204)
