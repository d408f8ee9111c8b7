"""An MCP server's connection left idle stays up: the gateway's idle checks suit the protocol
version the server speaks (2026-07-28 has no `ping`), so they never break a good connection."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from loguru import logger

from martlet_molt.tools.mcp_config import McpServerConfig
from martlet_molt.tools.mcp_servers import McpServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_an_idle_connection_passes_its_checks_and_is_never_dropped() -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    config = McpServerConfig(
        name="t",
        command=sys.executable,
        args=("-m", "tests.tools.mcp_test_server", "stdio"),
        env={"PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
    )
    server = McpServer(config, tool_timeout=5.0, check_seconds=0.1)
    try:
        await server.start(wait_seconds=10.0)
        assert server.state == "ready", server.error
        async with asyncio.timeout(10.0):
            while True:
                if server.checks_passed >= 5:
                    break
                assert server.state == "ready", server.error
                await asyncio.sleep(0.05)
        assert "t__add" in server.tools
        assert lines == []  # never "unavailable", never a reconnect
    finally:
        await server.close()
        logger.remove(sink)
