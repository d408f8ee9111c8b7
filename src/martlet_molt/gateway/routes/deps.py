"""What the route modules share: the app's run manager and settings, who is asking, and the
shapes of path and query parameters, each resolved once per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from martlet_molt.config import Settings
from martlet_molt.core.runs import PROVIDER_HINT, RunManager
from martlet_molt.core.session import SESSION_ID_PATTERN
from martlet_molt.errors import ProviderNotConfigured
from martlet_molt.gateway.auth import require_principal, require_stream_principal
from martlet_molt.gateway.native_events import SseFormat
from martlet_molt.gateway.openai.served_models import ServedModels
from martlet_molt.gateway.schemas import ErrorResponse, OpenAIErrorResponse
from martlet_molt.tools.mcp_servers import McpServer

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 409, 413, 422, 429, 503)
}
OPENAI_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": OpenAIErrorResponse} for code in (400, 401, 404, 409, 413, 429, 502, 503)
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


def served_models(runs: RunManager, settings: Settings) -> ServedModels:
    """The models the OpenAI-compatible API serves (503 while no provider is configured)."""
    if runs.provider is None:
        raise ProviderNotConfigured(PROVIDER_HINT)
    return ServedModels(runs.provider.model, settings.model_aliases)


def tool_servers(request: Request) -> list[McpServer]:
    """The app's MCP servers (none unless `MARTLET_MCP_CONFIG` names some)."""
    servers: list[McpServer] = request.app.state.tool_servers
    return servers


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
