"""`python -m bench.passthrough`: the plainest possible streaming gateway, for comparison.

A Starlette app under uvicorn (same server stack as the gateway) that forwards
`POST /v1/chat/completions` to the upstream with httpx and streams the raw bytes back. No
parsing, no storage, no log: what any relay costs at least per chunk.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def create_app(upstream: str) -> Starlette:
    """A pass-through proxy for `upstream` (an OpenAI base URL ending in /v1)."""
    client = httpx.AsyncClient(
        base_url=upstream,
        timeout=httpx.Timeout(600.0),
        limits=httpx.Limits(max_connections=4000, max_keepalive_connections=100),
    )

    async def relay(request: Request) -> Response:
        body = await request.body()
        outgoing = client.build_request(
            "POST",
            "/chat/completions",
            content=body,
            headers={"content-type": "application/json", "authorization": "Bearer bench"},
        )
        upstream_response = await client.send(outgoing, stream=True)

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in upstream_response.aiter_raw():
                yield chunk

        return StreamingResponse(
            chunks(),
            status_code=upstream_response.status_code,
            media_type=upstream_response.headers.get("content-type"),
            background=BackgroundTask(upstream_response.aclose),
        )

    return Starlette(routes=[Route("/v1/chat/completions", relay, methods=["POST"])])


def main(argv: list[str] | None = None) -> None:
    """Serve the proxy on 127.0.0.1."""
    parser = argparse.ArgumentParser(description="Plain pass-through streaming proxy.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="OpenAI base URL, e.g. http://.../v1")
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(args.upstream),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
