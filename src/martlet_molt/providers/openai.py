"""Any OpenAI-compatible chat model (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM) through the
official SDK, streamed as typed deltas."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import httpx2
import openai
import orjson
from openai import AsyncOpenAI

from martlet_molt.errors import (
    ProviderError,
    UpstreamHttpError,
    UpstreamMalformed,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from martlet_molt.providers.base import (
    ChatMessage,
    Delta,
    FinishDelta,
    ModelOptions,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
    UsageDelta,
)
from martlet_molt.providers.upstream_http import UpstreamHttpClient, body_chunks

# Local servers accept any key; the SDK insists on one.
PLACEHOLDER_API_KEY = "not-needed"
# How long to wait, after `[DONE]`, for the body to end so its connection can be reused.
DRAIN_SECONDS = 1.0
_DEFAULTS = ModelOptions()
# What a run's error says when the upstream stops sending (before or during the body).
SILENT = "upstream went silent for longer than the idle timeout"
# Errors that mean the upstream's connection ended mid-body: httpx2's, and aiohttp's where the
# body is read from aiohttp directly (`providers/upstream_http.py`).
_DROPPED = frozenset(
    {
        "RemoteProtocolError",
        "ReadError",
        "ConnectError",
        "NetworkError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ClientOSError",
    }
)


class OpenAIProvider:
    """Streams chat completions; closing the stream closes the upstream HTTP response."""

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None = None,
        base_url: str | None = None,
        label: str = "openai",
        timeout: float = 600.0,
        idle_timeout: float = 120.0,
        max_retries: int = 2,
        max_tokens: int | None = None,
    ) -> None:
        self._model = model
        self._label = label
        self._max_tokens = max_tokens
        # The SDK retries 429, 5xx and connection errors with backoff, honouring Retry-After,
        # before a response starts; the read timeout bounds silence between any two bytes.
        # Its aiohttp transport reads a streamed body for much less CPU per chunk than the
        # default one (docs/BENCHMARKS.md, "Measurements behind the code").
        timeouts = openai.Timeout(timeout, read=idle_timeout)
        self._http_client = UpstreamHttpClient(timeout=timeouts)
        self._client = AsyncOpenAI(
            api_key=api_key or PLACEHOLDER_API_KEY,
            base_url=base_url,
            timeout=timeouts,
            max_retries=max_retries,
            http_client=self._http_client,
        )

    @property
    def name(self) -> str:
        """The provider's kind and where it points."""
        return f"{self._label} ({self._client.base_url})"

    @property
    def model(self) -> str:
        """The model every request asks for."""
        return self._model

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        options: ModelOptions | None = None,
    ) -> AsyncIterator[Delta]:
        """Stream one completion; every failure becomes a `ProviderError` whose subclass names
        the cause and whose message says what happened.

        The SDK makes the request (auth, base URL, retries with backoff and `Retry-After`,
        status errors); the body is read raw and parsed here, because the SDK's per-chunk
        model construction costs several times more CPU than everything else the gateway
        does per token. (`httpx2` is the SDK's own HTTP client: its `Response` is what the
        SDK hands back for a raw stream.)
        """
        body = self._body(messages, tools, options or _DEFAULTS)
        try:
            # The SDK's documented way to send a request it does not shape itself: the body
            # is already OpenAI's wire format, and skipping `create`'s parameter transform
            # saves time before every first token (docs/BENCHMARKS.md, "Measurements behind
            # the code"). Retries and errors are the SDK's.
            response = await self._client.post(
                "/chat/completions", cast_to=httpx2.Response, body=body, stream=True
            )
            try:
                payloads = data_payloads(body_chunks(response))
                async for payload in payloads:
                    if payload == b"[DONE]":
                        await _drain(payloads)
                        break
                    for delta in parse_chunk(payload):
                        yield delta
            finally:
                await response.aclose()
        except ProviderError:
            raise
        except openai.APIError as exc:
            raise _api_error(exc) from exc
        except Exception as exc:
            raise _transport_error(exc) from exc

    def _body(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], options: ModelOptions
    ) -> dict[str, Any]:
        """The request in OpenAI's wire format; a request's options win over the defaults."""
        body: dict[str, Any] = {
            "model": options.model or self._model,
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            body["tools"] = list(tools)
        max_tokens = options.max_tokens if options.max_tokens is not None else self._max_tokens
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if options.temperature is not None:
            body["temperature"] = options.temperature
        if options.top_p is not None:
            body["top_p"] = options.top_p
        return body

    async def release_idle_connections(self) -> None:
        """Close the connections to the upstream that no request is using."""
        self._http_client.close_idle_connections()

    async def aclose(self) -> None:
        """Close the SDK's HTTP client."""
        await self._client.close()


async def _drain(payloads: AsyncIterator[bytes]) -> None:
    """Read what follows `[DONE]` (normally only the end of the body), so the connection goes
    back to the pool instead of being closed: the next run skips a TCP (and TLS) handshake.
    The reply is complete by now, so an upstream that lingers or drops is simply left."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in payloads:
                pass


async def data_payloads(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The `data` of each server-sent event in a byte stream. Lines end only at LF (with an
    optional CR before it), never at the other characters `str.splitlines` knows, such as
    U+2028, which JSON may carry unescaped."""
    pending = b""
    data: list[bytes] = []
    async for chunk in chunks:
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    yield b"\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
    if pending.startswith(b"data:"):
        data.append(pending[5:].lstrip(b" "))
    if data:
        yield b"\n".join(data)


def parse_chunk(payload: bytes) -> list[Delta]:
    """The deltas in one `chat.completion.chunk` (an OpenAI error object raises).

    orjson parses it (it runs per token: docs/BENCHMARKS.md, "Measurements behind the code");
    what orjson refuses and the standard library accepts (a lone surrogate, `NaN`, a byte
    order mark) is read as the standard library reads it."""
    try:
        chunk: object = orjson.loads(payload)
    except orjson.JSONDecodeError:
        try:
            chunk = json.loads(payload)
        except ValueError as exc:
            raise UpstreamMalformed(str(exc)) from exc
    if not isinstance(chunk, dict):
        raise UpstreamMalformed("not a JSON object")
    body = cast("dict[str, Any]", chunk)
    if body.get("error"):
        error: Any = body["error"]
        message = str(
            cast("dict[str, Any]", error).get("message") if isinstance(error, dict) else error
        )
        raise ProviderError(f"upstream error: {message}")
    try:
        return _deltas(body)
    except (AttributeError, TypeError, ValueError) as exc:  # a field of the wrong type
        raise UpstreamMalformed(f"{type(exc).__name__}: {exc}") from exc


def _deltas(body: dict[str, Any]) -> list[Delta]:
    """The deltas in a chunk that is a JSON object and no error."""
    deltas: list[Delta] = []
    usage: Any = body.get("usage")
    if usage:
        deltas.append(
            UsageDelta(
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0),
                int(usage.get("total_tokens") or 0),
            )
        )
    choices: Any = body.get("choices") or ()
    for choice in choices:
        delta: Any = choice.get("delta") or {}
        content = delta.get("content")
        if content:
            deltas.append(TextDelta(content))
        for call in delta.get("tool_calls") or ():
            function: Any = call.get("function") or {}
            deltas.append(
                ToolCallDelta(
                    index=int(call.get("index") or 0),
                    call_id=call.get("id"),
                    name=function.get("name"),
                    arguments=function.get("arguments") or "",
                )
            )
        reason = choice.get("finish_reason")
        if reason:
            deltas.append(FinishDelta(reason))
    return deltas


def _transport_error(exc: Exception) -> ProviderError:
    """A body's reader (aiohttp's, else httpx2's) lets its errors through mid-stream; name the
    common ones, and type each by its cause."""
    name = type(exc).__name__
    if name in ("ReadTimeout", "SocketTimeoutError"):
        return UpstreamTimeout(SILENT)
    if name in _DROPPED:
        return UpstreamUnreachable(f"upstream connection dropped mid-stream ({name})")
    message = f"upstream stream failed: {name}: {exc}"
    if isinstance(exc, TimeoutError | httpx2.TimeoutException):
        return UpstreamTimeout(message)
    if isinstance(exc, ConnectionError | httpx2.TransportError):
        return UpstreamUnreachable(message)
    return ProviderError(message)


def _timeout_error(exc: openai.APITimeoutError) -> ProviderError:
    """A timeout is silence mid-request, unless the connection itself failed: the SDK's
    aiohttp transport reports a refused connection as a connect timeout."""
    connect = exc.__cause__
    if not isinstance(connect, httpx2.ConnectTimeout):
        return UpstreamTimeout(SILENT)
    refused = connect.__cause__
    while refused is not None and not isinstance(refused, OSError):
        refused = refused.__cause__
    if refused is None:
        return UpstreamTimeout("could not reach the upstream: connecting timed out")
    reason = os.strerror(refused.errno) if refused.errno else str(refused)
    return UpstreamUnreachable(f"could not reach the upstream: {reason}")


def _api_error(exc: openai.APIError) -> ProviderError:
    """The SDK's error as ours, with a one-line reason a reader can act on."""
    if isinstance(exc, openai.APITimeoutError):
        return _timeout_error(exc)
    if isinstance(exc, openai.APIStatusError):
        return UpstreamHttpError(exc.status_code, exc.message)
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamUnreachable(f"could not reach the upstream: {exc.message}")
    return ProviderError(f"upstream error: {exc.message}")
