"""Health for balancers and process managers, and Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST

from martlet_molt.errors import ServiceUnavailable
from martlet_molt.gateway.routes.deps import ERRORS, Principal, Runs, tool_servers
from martlet_molt.gateway.schemas import HealthResponse, ReadyResponse

READY_TIMEOUT_SECONDS = 5.0
"""`/readyz` answers 503 when the store does not answer within this time."""

router = APIRouter(responses=ERRORS)


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
async def readyz(request: Request, runs: Runs) -> ReadyResponse:
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
        unavailable_tool_servers=[
            server.config.name for server in tool_servers(request) if server.state != "ready"
        ],
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(runs: Runs, _principal: Principal) -> Response:
    """Prometheus metrics; behind the same API key as the rest of the API."""
    return Response(runs.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
