"""The gateway's tools, as settings ask: the built-ins and plug-ins `MARTLET_TOOLS` names, and
every MCP server of `MARTLET_MCP_CONFIG`. Tools are off until configured."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

from martlet_molt.config import Settings
from martlet_molt.core.tools import BUILTIN_TOOLS, ToolRegistry, build_registry
from martlet_molt.tools.mcp_servers import McpServer
from martlet_molt.tools.plugins import plugin_tools

MCP_START_WAIT_SECONDS = 10.0
"""How long start-up waits for each MCP server's first connection before serving anyway."""


async def open_tools(
    settings: Settings, stack: AsyncExitStack
) -> tuple[ToolRegistry, list[McpServer]]:
    """The registry every run uses, and the MCP servers behind it (stopped by `stack`)."""
    available = dict(BUILTIN_TOOLS)
    if settings.enabled_tools:
        available.update(plugin_tools())
    fixed = [
        replace(tool, timeout=settings.tool_timeout_seconds)
        for tool in build_registry(settings.enabled_tools, available)
    ]
    servers: list[McpServer] = []
    if settings.mcp_config:
        from martlet_molt.tools.mcp_config import load_mcp_config
        from martlet_molt.tools.mcp_servers import start_servers

        servers = await start_servers(
            load_mcp_config(settings.mcp_config),
            tool_timeout=settings.tool_timeout_seconds,
            wait_seconds=MCP_START_WAIT_SECONDS,
        )
        for server in servers:
            stack.push_async_callback(server.close)
    registry = ToolRegistry(fixed, sources=servers, max_result_chars=settings.tool_result_max_chars)
    return registry, servers


def tool_listing(registry: ToolRegistry, servers: list[McpServer]) -> list[dict[str, Any]]:
    """Every tool with its source and state (`GET /tools`); a server that is down lists
    itself, since its tools are unknown until it comes back."""
    listing: list[dict[str, Any]] = []
    from_servers = {name for server in servers for name in server.tools}
    for tool in registry:
        if tool.name not in from_servers:
            source = "builtin" if tool.name in BUILTIN_TOOLS else "plugin"
            listing.append(_entry(tool.name, tool.description, source, "available"))
    for server in servers:
        source = f"mcp:{server.config.name}"
        if server.state != "ready":
            listing.append({**_entry(None, "", source, "unavailable"), "error": server.error})
            continue
        for tool in server.tools.values():
            listing.append(_entry(tool.name, tool.description, source, "available"))
    return listing


def _entry(name: str | None, description: str, source: str, state: str) -> dict[str, Any]:
    return {"name": name, "description": description, "source": source, "state": state}
