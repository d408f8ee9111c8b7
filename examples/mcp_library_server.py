"""A small MCP server for trying tools with martlet_molt: a library catalogue the model can
search. Run by the gateway over stdio (see examples/mcp.json and docs/tools.md).

`count_copies` is slow on purpose (it "asks every branch"), to watch a long call: reload the
page while it runs, or cancel the run, and this server prints that it was cancelled.
"""

from __future__ import annotations

import asyncio
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("library")

BOOKS = {
    "the left hand of darkness": ("Ursula K. Le Guin", 1969, "shelf B3"),
    "a wizard of earthsea": ("Ursula K. Le Guin", 1968, "shelf B3"),
    "the dispossessed": ("Ursula K. Le Guin", 1974, "shelf B4"),
    "kindred": ("Octavia E. Butler", 1979, "shelf A1"),
}


@server.tool()
async def find_book(title: str) -> str:
    """Find a book by (part of) its title: author, year and where it is shelved."""
    wanted = title.strip().lower()
    found = [
        f"{name.title()} by {author} ({year}), {shelf}"
        for name, (author, year, shelf) in BOOKS.items()
        if wanted in name
    ]
    return "\n".join(found) or f"no book matches {title!r}"


@server.tool()
async def count_copies(title: str) -> str:
    """Count the copies of a book in every branch of the library (slow: about 15 seconds)."""
    try:
        await asyncio.sleep(15)
    except asyncio.CancelledError:
        print(f"library: count_copies({title!r}) was cancelled", file=sys.stderr, flush=True)
        raise
    return f"{len(title) % 4 + 1} copies of {title!r} across 3 branches"


if __name__ == "__main__":
    server.run("stdio")
