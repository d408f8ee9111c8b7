"""`create_app(settings)`: wires store, provider, tools and run manager in the lifespan.

Nothing is built at import time, so each test (or process) builds its own app.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from martlet_molt import __version__
from martlet_molt.broker.base import create_broker
from martlet_molt.config import Settings
from martlet_molt.core.recovery import interrupt_orphaned_runs
from martlet_molt.core.runs import RunManager
from martlet_molt.errors import MartletError, SettingsRefused
from martlet_molt.gateway.auth import ApiKeys
from martlet_molt.gateway.error_responses import http_error, invalid_request, martlet_error
from martlet_molt.gateway.limits import BodyLimit
from martlet_molt.gateway.routes import router
from martlet_molt.gateway.sse import SERVER_SEND
from martlet_molt.providers.configured import open_provider
from martlet_molt.store import create_store
from martlet_molt.tools.catalog import open_tools
from martlet_molt.web import mount_web


def instance_name(settings: Settings) -> str:
    """This instance's name in leases and logs: `MARTLET_INSTANCE_ID`, else host, pid and a
    random suffix (a restarted process is a new owner)."""
    if settings.instance_id:
        return settings.instance_id
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class GatewayApp(FastAPI):
    """FastAPI, keeping the server's own `send` in each HTTP request's scope, so an SSE reader
    writes its body past the middleware's wrappers (`gateway.sse.body_send`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[SERVER_SEND] = send
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway for these settings."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
        refusal = settings.serving_refusal()
        if refusal is not None:
            raise SettingsRefused(refusal)
        # Released in reverse: runs (drained, saved), provider, broker (flushed), store.
        async with AsyncExitStack() as stack:
            store = create_store(settings.database_url)
            await store.open()
            stack.push_async_callback(store.close)
            owner = instance_name(settings)
            broker = create_broker(
                settings.redis_url,
                prefix=settings.redis_prefix,
                instance_id=owner,
                retention_seconds=settings.run_retention_seconds,
            )
            await broker.open()
            stack.push_async_callback(broker.close)
            provider = await stack.enter_async_context(open_provider(settings))
            if provider is not None:
                logger.info("provider {} with model {}", provider.name, provider.model)
            tools, tool_servers = await open_tools(settings, stack)
            app.state.tool_servers = tool_servers
            runs = RunManager(
                settings=settings,
                store=store,
                provider=provider,
                tools=tools,
                broker=broker,
                owner=owner,
            )
            if runs.leases is not None:
                # Other instances may be running: take over only runs whose lease expired.
                await runs.leases.take_over_expired()
                logger.info("instance {} shares runs through Redis", runs.owner)
            else:
                await interrupt_orphaned_runs(store)
            runs.open()
            stack.push_async_callback(runs.close)
            app.state.runs = runs
            yield
        logger.info("gateway stopped")

    app = GatewayApp(
        title="martlet_molt",
        version=__version__,
        description="A chat gateway whose replies never depend on the client's connection.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    # Keys are hashed here, once; requests are checked against the digests.
    app.state.api_keys = ApiKeys.from_settings(settings)
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes)  # CORS wraps its 413
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            expose_headers=["X-Run-Id", "X-Session-Id", "Content-Disposition"],
        )
    app.add_exception_handler(MartletError, martlet_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.include_router(router)
    mount_web(app)
    return app
