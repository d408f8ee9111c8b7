"""Sessions: a principal's conversations, each with its whole history; renaming, and finding
them again by the words in them (`?q=`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from martlet_molt.core.runs import RunManager
from martlet_molt.errors import SessionNotFound
from martlet_molt.gateway.routes.deps import ERRORS, Principal, Runs, SessionId
from martlet_molt.gateway.schemas import (
    MessageResponse,
    SessionDetail,
    SessionHit,
    SessionPage,
    SessionSearchPage,
    SessionSummary,
    SessionUpdate,
)
from martlet_molt.store.base import MessageRecord, SessionRecord

router = APIRouter(responses=ERRORS)

MAX_QUERY_CHARS = 500
"""The longest search query (only its first 16 words count anyway)."""


def summary(session: SessionRecord, active: dict[str, str]) -> SessionSummary:
    """A session as lists show it, with its active run from `active` (by session id)."""
    return SessionSummary(
        session_id=session.session_id,
        title=session.title,
        created_at=session.created_at,
        updated_at=session.updated_at,
        active_run_id=active.get(session.session_id),
    )


def message_response(m: MessageRecord) -> MessageResponse:
    """A saved message as the API shows it."""
    return MessageResponse(
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


async def _search(
    runs: RunManager, principal: str, query: str, limit: int, offset: int
) -> SessionSearchPage:
    hits, total = await runs.store.search_sessions(
        principal=principal, query=query, limit=limit, offset=offset
    )
    active = await runs.active_run_ids([hit.session.session_id for hit in hits])
    return SessionSearchPage(
        query=query,
        sessions=[
            SessionHit(
                **summary(hit.session, active).model_dump(),
                snippet=hit.snippet,
                highlights=hit.highlights,
                matched=hit.matched,
            )
            for hit in hits
        ],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/sessions", response_model=SessionPage | SessionSearchPage)
async def list_sessions(
    runs: Runs,
    principal: Principal,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,  # a database integer
    q: Annotated[
        str | None,
        Query(
            max_length=MAX_QUERY_CHARS,
            description="Search: the sessions whose title or messages hold every word "
            "(each as a prefix), best match first, each with a `snippet`. Blank: no search.",
        ),
    ] = None,
) -> SessionPage | SessionSearchPage:
    """The caller's sessions, most recently active first; with `q`, those that match it."""
    if q is not None and q.strip():
        return await _search(runs, principal, q.strip(), limit, offset)
    sessions, total = await runs.store.list_sessions(
        principal=principal, limit=limit, offset=offset
    )
    active = await runs.active_run_ids([s.session_id for s in sessions])
    return SessionPage(
        sessions=[summary(s, active) for s in sessions],
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
        **summary(session, active).model_dump(),
        messages=[message_response(m) for m in messages],
    )


@router.patch("/sessions/{session_id}", response_model=SessionSummary)
async def rename_session(
    session_id: SessionId, body: SessionUpdate, runs: Runs, principal: Principal
) -> SessionSummary:
    """Rename a session (every client lists it by this title); its place in the list stays."""
    session = await runs.store.rename_session(session_id, principal=principal, title=body.title)
    if session is None:
        raise SessionNotFound(f"session {session_id} not found")
    return summary(session, await runs.active_run_ids([session_id]))


@router.delete("/sessions/{session_id}", status_code=204)
async def delete_session(session_id: SessionId, runs: Runs, principal: Principal) -> Response:
    """Delete a session, cancelling its active run first."""
    await runs.delete_session(session_id, principal)
    return Response(status_code=204)
