"""Limits at the HTTP edge: `BodyLimit`, a pure ASGI middleware. A body larger than
`MARTLET_MAX_BODY_BYTES` gets 413 `body_too_large` before the app reads it. A declared
`Content-Length` is judged from the header alone; a body without one (chunked) is read up to the
limit, and no further, before the app is called. Only `receive` is ever wrapped, never `send`,
so streamed responses cost nothing more per chunk (and `BaseHTTPMiddleware`, which breaks
disconnect handling of streams, is not used).
"""

from __future__ import annotations

from collections import deque

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from martlet_molt.errors import BodyTooLarge
from martlet_molt.gateway.error_responses import OPENAI_PREFIX, error_response

# -- body size ------------------------------------------------------------------------------


def _content_length(scope: Scope) -> int | None:
    """The declared body size, or None when the request declares none (or nonsense, which the
    server rejects before us anyway)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = bytes(value).strip()
            return int(text) if text.isdigit() else None
    return None


class BodyLimit:
    """Refuse request bodies larger than `max_body_bytes` with 413, reading no more of them."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            # The server delivers exactly the declared bytes, so the header is the whole check.
            if declared > self.max_body_bytes:
                await self._refuse(scope, receive, send, declared)
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length (a chunked body, or none at all): read it up to the limit first.
        early: deque[Message] = deque()
        size = 0
        while True:
            message = await receive()
            early.append(message)
            if message["type"] != "http.request":
                break  # the client went away: the app sees that when it reads
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                await self._refuse(scope, receive, send, None)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            if early:
                return early.popleft()
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, declared: int | None
    ) -> None:
        limit = self.max_body_bytes
        if declared is None:
            error = BodyTooLarge(
                f"the request body is larger than the limit of {limit} bytes", max_body_bytes=limit
            )
        else:
            error = BodyTooLarge(
                f"the request body is {declared} bytes; the limit is {limit} bytes",
                max_body_bytes=limit,
                content_length=declared,
            )
        openai = str(scope.get("path", "")).startswith(OPENAI_PREFIX)
        await error_response(error, openai=openai)(scope, receive, send)
