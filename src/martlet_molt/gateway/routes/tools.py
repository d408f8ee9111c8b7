"""`GET /tools`: every tool the model may call, where it comes from, and whether it is
available now (an MCP server that is down says so, with why)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from martlet_molt.gateway.routes.deps import ERRORS, Principal, Runs, tool_servers
from martlet_molt.tools.catalog import tool_listing

router = APIRouter(responses=ERRORS)


@router.get("/tools")
async def list_tools(request: Request, runs: Runs, principal: Principal) -> dict[str, Any]:
    """The tools and their state."""
    del principal  # the same for every principal, but only with a valid key
    return {"tools": tool_listing(runs.tools, tool_servers(request))}
