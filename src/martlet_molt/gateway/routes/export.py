"""Taking a chat away: `GET /sessions/{id}/export` as a Markdown file to read or a JSON file
with everything the API knows of it (messages, tool calls and results, statuses, times)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from martlet_molt.core.export import content_disposition, to_markdown
from martlet_molt.errors import SessionNotFound
from martlet_molt.gateway.routes.deps import ERRORS, Principal, Runs, SessionId
from martlet_molt.gateway.routes.sessions import message_response, summary
from martlet_molt.gateway.schemas import SessionExport

router = APIRouter(responses=ERRORS)

MARKDOWN = "text/markdown; charset=utf-8"


class ExportFormat(StrEnum):
    """What file the export is."""

    MARKDOWN = "markdown"
    JSON = "json"


_DOCUMENTED: dict[int | str, dict[str, Any]] = {
    200: {
        "model": SessionExport,
        "description": "The file, as an attachment named after the session's title.",
        "content": {"text/markdown": {"schema": {"type": "string"}}},
    }
}


@router.get(
    "/sessions/{session_id}/export",
    response_class=Response,
    responses=_DOCUMENTED,
)
async def export_session(
    session_id: SessionId,
    runs: Runs,
    principal: Principal,
    fmt: Annotated[
        ExportFormat, Query(alias="format", description="`markdown` (default) or `json`.")
    ] = ExportFormat.MARKDOWN,
) -> Response:
    """The whole session as a file to keep: Markdown to read, or JSON with every field."""
    session = await runs.store.get_session(session_id)
    if session is None or session.principal != principal:
        raise SessionNotFound(f"session {session_id} not found")
    messages = await runs.store.list_messages(session_id)
    now = datetime.now(UTC)
    if fmt is ExportFormat.MARKDOWN:
        body, media_type, extension = (
            to_markdown(session, messages, exported_at=now),
            MARKDOWN,
            "md",
        )
    else:
        active = await runs.active_run_ids([session_id])
        export = SessionExport(
            session=summary(session, active),
            messages=[message_response(m) for m in messages],
            exported_at=now,
        )
        body, media_type, extension = export.model_dump_json(indent=2), "application/json", "json"
    return Response(
        body,
        media_type=media_type,
        headers={"Content-Disposition": content_disposition(session, extension)},
    )
