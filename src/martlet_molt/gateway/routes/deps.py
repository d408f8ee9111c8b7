"""What the route modules share: the app's run manager and settings, who is asking, and the
shapes of path and query parameters, each resolved once per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from martlet_molt.config import Settings
from martlet_molt.core.runs import RunManager
from martlet_molt.core.session import SESSION_ID_PATTERN
from martlet_molt.gateway.auth import require_principal, require_stream_principal
from martlet_molt.gateway.schemas import ErrorResponse
from martlet_molt.gateway.sse import SseFormat

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 409, 413, 422, 429, 503)
}

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
