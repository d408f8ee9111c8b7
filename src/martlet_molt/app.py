"""`create_app(settings)`: wires store, provider, tools and run manager in the lifespan.

Nothing is built at import time, so each test (or process) builds its own app.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from loguru import logger
from sse_starlette.sse import AppStatus

from martlet_molt import __version__
from martlet_molt.config import Settings
from martlet_molt.core.recovery import interrupt_orphaned_runs
from martlet_molt.core.runs import RunManager
from martlet_molt.core.tools import build_registry
from martlet_molt.errors import MartletError
from martlet_molt.gateway.routes import router
from martlet_molt.providers.base import Provider
from martlet_molt.providers.openai import OpenAIProvider
from martlet_molt.store.base import create_store


def build_provider(settings: Settings) -> Provider | None:
    """The configured upstream, or None when nothing is configured (chat then answers 503)."""
    if not settings.provider_configured:
        return None
    return OpenAIProvider(
        model=settings.model,
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,
        timeout=settings.upstream_timeout_seconds,
        idle_timeout=settings.upstream_idle_timeout_seconds,
        max_retries=settings.upstream_max_retries,
    )


async def _martlet_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MartletError)
    return JSONResponse(
        status_code=exc.status_code,
        content={"error": {"code": exc.code, "message": exc.message, "details": exc.details}},
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway for these settings."""
    settings = settings or Settings()
    # Streams end when their runs end; the run manager drains runs at shutdown.
    AppStatus.disable_automatic_graceful_drain()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
        store = create_store(settings.database_url)
        await store.open()
        await interrupt_orphaned_runs(store)
        provider = build_provider(settings)
        if provider is None:
            logger.warning(
                "no provider configured: chat answers 503 until OPENAI_API_KEY "
                "or OPENAI_BASE_URL is set"
            )
        else:
            logger.info("provider {} with model {}", provider.name, provider.model)
        runs = RunManager(
            settings=settings,
            store=store,
            provider=provider,
            tools=build_registry(settings.enabled_tools),
        )
        runs.open()
        app.state.runs = runs
        try:
            yield
        finally:
            await runs.close()
            if provider is not None:
                await provider.aclose()
            await store.close()
            logger.info("gateway stopped")

    app = FastAPI(
        title="martlet_molt",
        version=__version__,
        description="A chat gateway whose replies never depend on the client's connection.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_exception_handler(MartletError, _martlet_error)
    app.include_router(router)
    return app
