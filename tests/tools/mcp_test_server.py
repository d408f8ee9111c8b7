"""A small MCP server, written with the `mcp` SDK's server side, that the tool tests run over
stdio (`python -m tests.tools.mcp_test_server stdio`) and streamable HTTP (`... http PORT`).

What it lived through goes to the file `MCP_TEST_JOURNAL` names, one line per fact (a call
started, a call cancelled), so a test can tell what the server saw.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("test-tools")
_in_flight: list[asyncio.Event] = []


def _journal(line: str) -> None:
    path = os.environ.get("MCP_TEST_JOURNAL")
    if path:
        with Path(path).open("a", encoding="utf-8") as journal:
            journal.write(line + "\n")


@server.tool()
async def add(a: int, b: int) -> int:
    """Add two integers."""
    _journal(f"add {a} {b}")
    return a + b


@server.tool()
async def slow(seconds: float) -> str:
    """Wait this many seconds, then say so."""
    _journal("slow started")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _journal("slow cancelled")
        raise
    return f"waited {seconds} s"


@server.tool()
async def together(name: str) -> str:
    """Return once another call of this tool is running at the same time (or after 5 s)."""
    arrived = asyncio.Event()
    _in_flight.append(arrived)
    for event in _in_flight:
        if len(_in_flight) >= 2:
            event.set()
    try:
        async with asyncio.timeout(5):
            await arrived.wait()
    except TimeoutError:
        return f"{name}: alone"
    return f"{name}: together"


@server.tool()
async def big(size: int) -> str:
    """A result of `size` characters."""
    return "x" * size


@server.tool()
async def boom() -> str:
    """Fail."""
    raise ValueError("the tool broke")


@server.tool()
async def die() -> str:
    """Kill this server in the middle of the call."""
    _journal(f"die {os.getpid()}")
    os._exit(1)


async def extra() -> str:
    """A tool that exists only after `grow`."""
    return "extra here"


@server.tool()
async def grow(ctx: Context) -> str:
    """Add the tool `extra`, and tell the client its tool list changed (a subscription event on
    2026-07-28 connections)."""
    server.add_tool(extra)
    await ctx.notify_tools_changed()
    return "grown"


@server.tool()
async def pid() -> int:
    """The server's process id."""
    return os.getpid()


if __name__ == "__main__":
    if sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
