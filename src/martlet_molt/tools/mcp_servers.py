"""MCP servers as tool sources, through the official `mcp` SDK's client.

Each configured server has one supervisor task that owns its connection (the SDK's `Client`
is an async context that must be entered and left by the same task): it connects, lists the
tools, keeps the list fresh when the server announces a change, checks an idle connection
every few seconds (a fresh tool list on 2026-07-28 connections, which have no `ping`; a ping on
older ones), and when the connection breaks (a stdio server that died, an HTTP server gone away) it
reconnects with growing pauses. A server that cannot start leaves the gateway up: one log line
names it, and its tools are simply not offered until it comes back.

Calls run in the run's own task, on the supervisor's session, so cancelling a run cancels its
calls; the SDK then sends the server `notifications/cancelled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from typing import Any, Literal

from loguru import logger
from pydantic import BaseModel, ConfigDict

from martlet_molt.core.tools import Tool, ToolFailed
from martlet_molt.tools.mcp_config import McpServerConfig

SEPARATOR = "__"
"""Between a server's name and its tool's in the names the model sees: no two servers collide."""
CHECK_SECONDS = 5.0
"""How often an idle connection is checked, so a dead server is noticed without a call."""
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
"""Pauses between reconnection attempts; the last repeats."""

_INVALID = re.compile(r"[^A-Za-z0-9_-]")

ServerState = Literal["starting", "ready", "failed", "stopped"]


def exposed_name(server: str, tool: str) -> str:
    """The name a server's tool goes by (what OpenAI's API accepts: 64 of `A-Za-z0-9_-`)."""
    return _INVALID.sub("_", f"{server}{SEPARATOR}{tool}")[:64]


class _Arguments(BaseModel):
    """Whatever the model sends; the server validates against its own schema."""

    model_config = ConfigDict(extra="allow")


def _text_of(result: Any) -> str:
    """The text of a `CallToolResult`: its text parts joined, else its structured content."""
    texts = [part.text for part in result.content if getattr(part, "type", None) == "text"]
    if texts:
        return "\n".join(texts)
    if result.structured_content is not None:
        return str(result.structured_content)
    return ""


class McpServer:
    """One configured MCP server and the tools it offers right now."""

    def __init__(
        self, config: McpServerConfig, *, tool_timeout: float, check_seconds: float = CHECK_SECONDS
    ) -> None:
        self.config = config
        self.tool_timeout = tool_timeout
        self.check_seconds = check_seconds
        self.checks_passed = 0
        """Idle checks the live connection passed (how long it has been known good)."""
        self.state: ServerState = "starting"
        self.error: str | None = None
        self.tools: dict[str, Tool] = {}
        self._client: Any = None
        self._supervisor: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._broken = asyncio.Event()
        self._settled = asyncio.Event()

    # -- life cycle ----------------------------------------------------------------------

    async def start(self, wait_seconds: float) -> None:
        """Start the supervisor; wait (bounded) for the first connection to succeed or fail."""
        self._supervisor = asyncio.create_task(self._supervise(), name=f"mcp {self.config.name}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_seconds):
                await self._settled.wait()

    async def close(self) -> None:
        """Disconnect (a stdio server's process is stopped)."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self.state, self.tools = "stopped", {}

    async def _supervise(self) -> None:
        attempt = 0
        while True:
            try:
                await self._connected()
                attempt = 0  # it ran, then broke: start the pauses again
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # anyio task groups raise exception groups
                self._fail(exc, attempt)
            self._settled.set()
            pause = BACKOFF_SECONDS[min(attempt, len(BACKOFF_SECONDS) - 1)]
            attempt += 1
            await asyncio.sleep(pause)

    def _fail(self, exc: BaseException, attempt: int) -> None:
        self.state, self.tools, self._client = "failed", {}, None
        self.error = _reason(exc)
        log = logger.warning if attempt else logger.error
        log(
            "MCP server {} ({}) is unavailable: {}; retrying",
            self.config.name,
            self.config.describe(),
            self.error,
        )

    async def _connected(self) -> None:
        """One connection, from connect to break; returns when the connection broke."""
        from mcp import Client  # imported only when MCP servers are configured

        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                Client(await self._target(stack), message_handler=self._on_message)
            )
            self._client = client
            await self._list_tools()
            self.state, self.error = "ready", None
            self._settled.set()
            logger.info(
                "MCP server {} ({}) offers {} tools",
                self.config.name,
                self.config.describe(),
                len(self.tools),
            )
            listener = asyncio.create_task(self._listen(client))
            try:
                await self._watch(client)
            finally:
                listener.cancel()
                with contextlib.suppress(BaseException):
                    await listener

    async def _listen(self, client: Any) -> None:
        """Tool list changes: a `subscriptions/listen` stream on 2026-07-28 connections (older
        ones send `notifications/tools/list_changed`, which `_on_message` hears)."""
        try:
            async with client.listen(tools_list_changed=True) as subscription:
                async for _ in subscription:
                    self._changed.set()
        except Exception as exc:
            logger.debug("MCP server {} has no change stream: {!r}", self.config.name, exc)

    async def _target(self, stack: contextlib.AsyncExitStack) -> Any:
        """What the SDK's `Client` connects to: a stdio command, or a URL over an HTTP client
        of ours (carrying the configured headers; closed by `stack`)."""
        from mcp.client.stdio import StdioServerParameters
        from mcp.client.streamable_http import streamable_http_client

        config = self.config
        if config.url is not None:
            import httpx2

            http = httpx2.AsyncClient(headers=dict(config.headers), timeout=self.tool_timeout + 5)
            stack.push_async_callback(http.aclose)
            return streamable_http_client(config.url, http_client=http)
        return StdioServerParameters(
            command=config.command or "",
            args=list(config.args),
            env=dict(config.env),
            cwd=config.cwd,
        )

    async def _watch(self, client: Any) -> None:
        """Until the connection breaks: refresh the tools when told, check the connection
        when idle."""
        from mcp_types.version import MODERN_PROTOCOL_VERSIONS

        modern = client.protocol_version in MODERN_PROTOCOL_VERSIONS
        while True:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_seconds):
                    await _first(self._changed.wait(), self._broken.wait())
            if self._broken.is_set():
                self._broken.clear()
                raise ConnectionError("a call found the connection broken")
            async with asyncio.timeout(self.check_seconds):
                if modern or self._changed.is_set():
                    await self._list_tools()
                else:
                    await client.send_ping()
            self.checks_passed += 1

    async def _on_message(self, message: Any) -> None:
        if getattr(message, "method", None) == "notifications/tools/list_changed":
            self._changed.set()

    async def _list_tools(self) -> None:
        listed = await self._client.list_tools()
        tools: dict[str, Tool] = {}
        for tool in listed.tools:
            if not self.config.offers(tool.name):
                continue
            name = exposed_name(self.config.name, tool.name)
            tools[name] = Tool(
                name=name,
                description=tool.description or "",
                parameters=dict(tool.input_schema or {"type": "object"}),
                func=self._caller(tool.name),
                args_model=_Arguments,
                timeout=self.tool_timeout,
            )
        self.tools = tools

    # -- calls ---------------------------------------------------------------------------

    def _caller(self, tool: str) -> Any:
        async def call(arguments: BaseModel) -> str:
            client = self._client
            if client is None:
                raise ToolFailed(f"MCP server {self.config.name} is not connected")
            try:
                result = await client.call_tool(tool, dict(arguments.model_extra or {}))
            except (asyncio.CancelledError, TimeoutError):
                raise
            except Exception as exc:
                self._broken.set()
                raise ToolFailed(f"MCP server {self.config.name} failed: {_reason(exc)}") from exc
            text = _text_of(result)
            if result.is_error:
                raise ToolFailed(text or f"{tool} failed")
            return text

        return call


async def _first(*waits: Any) -> None:
    """Wait until the first of these coroutines finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _reason(exc: BaseException) -> str:
    """The innermost cause of a failure, in one line (anyio wraps errors in groups)."""
    while isinstance(exc, BaseExceptionGroup):
        group: BaseExceptionGroup[BaseException] = exc  # pyright: ignore[reportUnknownVariableType]
        exc = group.exceptions[0]
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


async def start_servers(
    configs: Sequence[McpServerConfig], *, tool_timeout: float, wait_seconds: float
) -> list[McpServer]:
    """Start every configured server at once, each waited for at most `wait_seconds`."""
    servers = [McpServer(config, tool_timeout=tool_timeout) for config in configs]
    await asyncio.gather(*(server.start(wait_seconds) for server in servers))
    return servers
