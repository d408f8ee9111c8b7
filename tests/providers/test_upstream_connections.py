"""The provider reuses its upstream connection from one run to the next: after `[DONE]` it
reads the body to its end, so the SDK's pool keeps the connection (no new TCP or TLS
handshake before every run's first token). Each way a real upstream fails reaches the caller
as the `ProviderError` subclass naming its cause."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from martlet_molt.errors import (
    ProviderError,
    UpstreamHttpError,
    UpstreamMalformed,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from martlet_molt.metrics import classify_upstream_error
from martlet_molt.providers.base import ModelOptions, TextDelta
from martlet_molt.providers.openai import OpenAIProvider
from martlet_molt.testing import FakeUpstream
from tests.conftest import script
from tests.web.cut_proxy import CutProxy


async def _text(provider: OpenAIProvider) -> str:
    pieces: list[str] = []
    async for delta in provider.stream([{"role": "user", "content": "hi"}]):
        if isinstance(delta, TextDelta):
            pieces.append(delta.text)
    return "".join(pieces)


@pytest.mark.asyncio
async def test_sequential_runs_share_one_upstream_connection(
    upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=20)
    with CutProxy(upstream.port) as proxy:
        provider = OpenAIProvider(model=model, base_url=f"{proxy.url}/v1", max_retries=0)
        try:
            for _ in range(5):
                assert await _text(provider) == "".join(sent.chunks)
        finally:
            await provider.aclose()
        assert proxy.accepted == 1


@pytest.mark.asyncio
async def test_a_request_s_options_reach_the_upstream(upstream: FakeUpstream, model: str) -> None:
    """Per-request options win over the provider's defaults; unset ones are not sent."""
    script(upstream, model, token_count=2)
    provider = OpenAIProvider(
        model="configured-default", base_url=f"{upstream.url}/v1", max_retries=0, max_tokens=99
    )
    try:
        options = ModelOptions(model=model, temperature=0.25, top_p=0.5, max_tokens=7)
        async for _ in provider.stream([{"role": "user", "content": "hi"}], (), options):
            pass
        async for _ in provider.stream([{"role": "user", "content": "hi"}]):
            pass
    finally:
        await provider.aclose()
    asked, plain = upstream.requests[-2:]
    assert (asked["model"], asked["temperature"], asked["top_p"]) == (model, 0.25, 0.5)
    assert asked["max_tokens"] == 7
    assert plain["model"] == "configured-default"
    assert plain["max_tokens"] == 99
    assert "temperature" not in plain
    assert "top_p" not in plain


IDLE = 0.5
"""The idle timeout in the failure tests: short, yet far above a loaded machine's jitter."""

FAILURES: dict[str, tuple[dict[str, Any], type[ProviderError], str, str]] = {
    # failure: (script fields, error class, metrics kind, how the message starts)
    "http_502": (
        {"error_status": 502},
        UpstreamHttpError,
        "http_5xx",
        "upstream returned HTTP 502: ",
    ),
    "http_429": (
        {"error_status": 429},
        UpstreamHttpError,
        "rate_limited",
        "upstream returned HTTP 429: ",
    ),
    "http_404": (
        {"error_status": 404},
        UpstreamHttpError,
        "http_4xx",
        "upstream returned HTTP 404: ",
    ),
    "silent_before_headers": (
        {"headers_delay": IDLE * 3},
        UpstreamTimeout,
        "timeout",
        "upstream went silent for longer than the idle timeout",
    ),
    "silent_mid_stream": (
        {"token_count": 6, "stall_after": 2},
        UpstreamTimeout,
        "timeout",
        "upstream went silent for longer than the idle timeout",
    ),
    "drop": (
        {"token_count": 6, "fail_after": 2},
        UpstreamUnreachable,
        "connection",
        "upstream connection dropped mid-stream (",
    ),
    "malformed": (
        {"token_count": 6, "malformed_after": 2},
        UpstreamMalformed,
        "malformed",
        "upstream sent a malformed chunk: ",
    ),
    "error_event": (
        {"token_count": 6, "error_event_after": 2},
        ProviderError,
        "other",
        "upstream error: The server had an error while processing your request.",
    ),
}


async def _failure(base_url: str, model: str) -> ProviderError:
    """The error the provider raises for one request (no retries)."""
    provider = OpenAIProvider(model=model, base_url=base_url, max_retries=0, idle_timeout=IDLE)
    try:
        with pytest.raises(ProviderError) as caught:
            await _text(provider)
    finally:
        await provider.aclose()
    return caught.value


@pytest.mark.asyncio
@pytest.mark.parametrize("failure", list(FAILURES))
async def test_each_upstream_failure_raises_the_error_naming_its_cause(
    upstream: FakeUpstream, model: str, failure: str
) -> None:
    fields, error_class, kind, message = FAILURES[failure]
    script(upstream, model, **fields)
    error = await _failure(upstream.base_url, model)
    assert type(error) is error_class, repr(error)
    assert error.message.startswith(message), error.message
    assert error.kind == classify_upstream_error(error) == kind
    if isinstance(error, UpstreamHttpError):
        assert error.status == fields["error_status"]


@pytest.mark.asyncio
async def test_a_refused_connection_raises_unreachable(model: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    error = await _failure(f"http://127.0.0.1:{closed_port}/v1", model)
    assert type(error) is UpstreamUnreachable, repr(error)
    assert error.message == "could not reach the upstream: Connection refused"
    assert classify_upstream_error(error) == "connection"
