"""A small async client of the gateway's HTTP API (httpx), used by the terminal commands.

`follow(run_id)` reads a run's events (`?format=json`) and survives the network: on a transport
error it reconnects with `Last-Event-ID` = the last `seq` it saw, with bounded exponential
backoff, and never yields a `seq` twice. SSE is parsed here (no extra dependency), following the
HTML spec's rules for lines, `data`, `event` and `id` fields and comments.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, NamedTuple, cast
from urllib.parse import unquote

import httpx

_LINE_END = re.compile(r"\r\n|\r|\n")

RETRYABLE_STATUSES = frozenset({502, 503, 504})
"""Answers on a resume that mean "try again shortly" (a proxy, or a gateway restarting)."""


class GatewayError(Exception):
    """Base of the client's errors."""


class ApiError(GatewayError):
    """The gateway answered with an error (`{"error": {"code", "message", "details"}}`)."""

    def __init__(
        self, status_code: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details or {}


class Unreachable(GatewayError):
    """No answer from the gateway at all (refused, reset, timed out) after the retries."""


class ConnectionLost(GatewayError):
    """A run's stream kept failing after every reconnect; the run itself may still be going."""

    def __init__(self, run_id: str, last_seq: int, cause: BaseException) -> None:
        super().__init__(f"lost the stream of run {run_id} after event {last_seq}: {cause}")
        self.run_id = run_id
        self.last_seq = last_seq


class ProtocolError(GatewayError):
    """The gateway's answer is not what this client understands."""


@dataclass(frozen=True)
class StreamEvent:
    """One event of a run: `delta`, `tool_call`, `tool_result`, `error` or `done`."""

    seq: int
    kind: str
    data: dict[str, Any]

    @property
    def text(self) -> str:
        """A delta's text ('' for other kinds)."""
        return str(self.data.get("text", "")) if self.kind == "delta" else ""


class ChatStream(NamedTuple):
    """A started run and its events (replayed from the start, reconnecting as needed)."""

    run_id: str
    session_id: str
    events: AsyncGenerator[StreamEvent]


class SessionFile(NamedTuple):
    """An exported session: the file's bytes, and the name the gateway gives it."""

    content: bytes
    filename: str | None


def _attachment_name(response: httpx.Response) -> str | None:
    """The file name of a `Content-Disposition: attachment` answer, UTF-8 form preferred."""
    disposition = response.headers.get("content-disposition", "")
    encoded = re.search(r"filename\*=UTF-8''([^;\s]+)", disposition, re.IGNORECASE)
    if encoded:
        return unquote(encoded.group(1))
    plain = re.search(r'filename="([^"]*)"', disposition)
    return plain.group(1) if plain else None


class _Truncated(Exception):
    """A stream ended before its `done` event."""


async def _sse_events(response: httpx.Response) -> AsyncIterator[StreamEvent]:
    """The events of an SSE body; lines end at CR, LF or CRLF; comments are skipped."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    pending, kind, last_id = "", "", ""
    data: list[str] = []
    async for chunk in response.aiter_bytes():
        text = pending + decoder.decode(chunk)
        held = "\r" if text.endswith("\r") else ""  # maybe half of a CRLF: wait for the rest
        *lines, pending = _LINE_END.split(text.removesuffix("\r") if held else text)
        pending += held
        for line in lines:
            if line == "":
                if data:
                    yield _event(last_id, kind or "message", "\n".join(data))
                data, kind = [], ""
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                elif name == "event":
                    kind = value
                elif name == "id" and "\0" not in value:
                    last_id = value


def _event(last_id: str, kind: str, data: str) -> StreamEvent:
    if not (last_id.isascii() and last_id.isdigit()):
        raise ProtocolError(f"event {kind!r} has no numeric id (got {last_id!r})")
    try:
        body = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"event {kind!r} is not JSON: {data[:80]!r}") from exc
    if not isinstance(body, dict):
        raise ProtocolError(f"event {kind!r} is not a JSON object")
    return StreamEvent(int(last_id), kind, cast(dict[str, Any], body))


async def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    await response.aread()
    code, message, details = f"http_{response.status_code}", response.text.strip(), {}
    try:
        parsed: Any = response.json()
    except ValueError:
        parsed = None
    body = cast(dict[str, Any], parsed) if isinstance(parsed, dict) else {}
    error: Any = body.get("error")
    if isinstance(error, dict):
        fields = cast(dict[str, Any], error)
        code = str(fields.get("code", code))
        message = str(fields.get("message", message))
        details = cast(dict[str, Any], fields.get("details") or {})
    elif "detail" in body:  # FastAPI's own validation errors
        message = json.dumps(body["detail"], ensure_ascii=False)
    raise ApiError(response.status_code, code, message or response.reason_phrase, details)


class GatewayClient:
    """The gateway's API. Use as `async with GatewayClient(url) as client: ...`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        max_attempts: int = 10,
        backoff: tuple[float, float] = (0.2, 5.0),
        read_timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.max_attempts = max_attempts
        self.backoff = backoff
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(10.0, read=read_timeout),
            transport=transport,
        )

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection."""
        await self._http.aclose()

    def _delay(self, failures: int) -> float:
        first, cap = self.backoff
        return min(cap, first * 2 ** (failures - 1))

    async def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """Send, retrying transport errors twice; an error answer raises `ApiError`."""
        for failures in range(1, 4):
            try:
                response = await self._http.send(request, stream=stream)
                break
            except httpx.TransportError as exc:
                if failures == 3:
                    reason = str(exc) or type(exc).__name__
                    raise Unreachable(f"{self._http.base_url}: {reason}") from exc
                await asyncio.sleep(self._delay(failures))
        else:  # pragma: no cover - the loop always breaks or raises
            raise AssertionError("unreachable")
        try:
            await _raise_for_status(response)
        except BaseException:
            await response.aclose()
            raise
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """An idempotent request's JSON answer."""
        response = await self._send(self._http.build_request(method, path, **kwargs))
        return cast(dict[str, Any], response.json())

    async def health(self) -> dict[str, Any]:
        """`GET /healthz`: which provider and model answer."""
        return await self._json("GET", "/healthz")

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """`GET /runs/{id}`: status, content so far, usage."""
        return await self._json("GET", f"/runs/{run_id}")

    async def cancel(self, run_id: str) -> dict[str, Any]:
        """`POST /runs/{id}/cancel`: the run as it ended."""
        return await self._json("POST", f"/runs/{run_id}/cancel")

    async def list_sessions(
        self, limit: int = 50, offset: int = 0, query: str | None = None
    ) -> dict[str, Any]:
        """`GET /sessions`: a page of sessions, most recently active first; with a `query`,
        those holding its words, best first, each with its matching `snippet`."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if query is not None:
            params["q"] = query
        return await self._json("GET", "/sessions", params=params)

    async def get_session(self, session_id: str) -> dict[str, Any]:
        """`GET /sessions/{id}`: the session's whole history."""
        return await self._json("GET", f"/sessions/{session_id}")

    async def rename_session(self, session_id: str, title: str) -> dict[str, Any]:
        """`PATCH /sessions/{id}`: give it a title every client shows; the session as listed."""
        return await self._json("PATCH", f"/sessions/{session_id}", json={"title": title})

    async def export_session(self, session_id: str, fmt: str = "markdown") -> SessionFile:
        """`GET /sessions/{id}/export`: the session as a file (`markdown` or `json`)."""
        request = self._http.build_request(
            "GET", f"/sessions/{session_id}/export", params={"format": fmt}
        )
        response = await self._send(request)
        return SessionFile(response.content, _attachment_name(response))

    async def start_stream(self, message: str, session_id: str | None = None) -> ChatStream:
        """Start a run (`POST /chat/stream`). Transport errors before the answer are retried
        with the same `client_request_id`, so a retry never starts a second run. Consume (or
        `aclose`) the events: they hold the connection."""
        body = {"message": message, "session_id": session_id, "client_request_id": uuid.uuid4().hex}
        request = self._http.build_request(
            "POST", "/chat/stream", params={"format": "json"}, json=body
        )
        response = await self._send(request, stream=True)
        run_id, sid = response.headers.get("X-Run-Id"), response.headers.get("X-Session-Id")
        if not run_id or not sid:
            await response.aclose()
            raise ProtocolError("the answer has no X-Run-Id / X-Session-Id headers")
        return ChatStream(run_id, sid, self._first_then_follow(response, run_id))

    async def _first_then_follow(
        self, response: httpx.Response, run_id: str
    ) -> AsyncGenerator[StreamEvent]:
        last = 0
        try:
            async for event in _sse_events(response):
                last = event.seq
                yield event
                if event.kind == "done":
                    return
        except httpx.TransportError:
            pass  # resumed below
        finally:
            await response.aclose()
        async for event in self.follow(run_id, after=last):
            yield event

    async def follow(self, run_id: str, after: int = 0) -> AsyncGenerator[StreamEvent]:
        """The run's events with `seq > after`, replayed then live, until `done`. Reconnects
        on network errors, resuming after the last event seen."""
        last, failures = after, 0
        while True:
            try:
                async with self._http.stream(
                    "GET",
                    f"/runs/{run_id}/stream",
                    params={"format": "json"},
                    headers={"Last-Event-ID": str(last)},
                ) as response:
                    if response.status_code in RETRYABLE_STATUSES:
                        raise _Truncated(f"HTTP {response.status_code}")
                    await _raise_for_status(response)
                    async for event in _sse_events(response):
                        if event.seq <= last:
                            continue
                        last, failures = event.seq, 0
                        yield event
                        if event.kind == "done":
                            return
                raise _Truncated("the stream ended before its done event")
            except (httpx.TransportError, _Truncated) as exc:
                failures += 1
                if failures >= self.max_attempts:
                    raise ConnectionLost(run_id, last, exc) from exc
                await asyncio.sleep(self._delay(failures))
