"""Prometheus metrics, counted at domain events (a run starts or ends, a reader comes or goes,
the upstream fails), never per chunk: the streaming hot path is untouched.

Each `Metrics` owns its own `CollectorRegistry`, so several apps in one process (tests) never
share or clash over metrics. `GET /metrics` serves `Metrics.exposition()`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from martlet_molt.core.status import RunStatus

UPSTREAM_ERROR_KINDS: Final = (
    "rate_limited",
    "http_5xx",
    "http_4xx",
    "timeout",
    "connection",
    "malformed",
    "other",
)
"""Every `kind` label of `martlet_upstream_errors_total`."""

TOKEN_KINDS: Final = ("prompt", "completion")

TTFT_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS: Final = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

_MAX_CAUSES = 8
_HTTP_STATUS = re.compile(r"\bHTTP (\d{3})\b")


class Metrics:
    """The gateway's metrics in a registry of their own; one method per domain event."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs_started = Counter("martlet_runs_started_total", "Runs started.", registry=r)
        self.runs = Counter(
            "martlet_runs_total", "Runs ended, by final status.", ["status"], registry=r
        )
        self.active_runs = Gauge(
            "martlet_active_runs", "Runs in progress (their tasks not yet done).", registry=r
        )
        self.readers = Gauge("martlet_readers", "Connected SSE readers.", registry=r)
        self.client_disconnects = Counter(
            "martlet_client_disconnects_total",
            "SSE readers that went away before their run's end event.",
            registry=r,
        )
        self.streamed_characters = Counter(
            "martlet_streamed_characters_total",
            "Characters of reply text streamed by ended runs (counted at each run's end).",
            registry=r,
        )
        self.tokens = Counter(
            "martlet_tokens_total",
            "Tokens reported by the upstream's usage, by kind.",
            ["kind"],
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "martlet_time_to_first_token_seconds",
            "From a run's creation to its first text delta.",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.run_duration = Histogram(
            "martlet_run_duration_seconds",
            "From a run's creation to its end.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "martlet_upstream_errors_total",
            "Upstream failures that ended a run (after the SDK's retries), by kind.",
            ["kind"],
            registry=r,
        )
        # Every label value shows up (as 0) from the first scrape, so rates work at once.
        for status in RunStatus:
            if status.is_final:
                self.runs.labels(status.value)
        for kind in TOKEN_KINDS:
            self.tokens.labels(kind)
        for kind in UPSTREAM_ERROR_KINDS:
            self.upstream_errors.labels(kind)

    def watch_active_runs(self, count: Callable[[], float]) -> None:
        """Read the number of active runs from `count` at each scrape."""
        self.active_runs.set_function(count)

    def run_started(self) -> None:
        """A run's task was started."""
        self.runs_started.inc()

    def run_ended(
        self,
        status: str,
        *,
        chars: int,
        duration: float,
        ttft: float | None,
        usage: Mapping[str, Any] | None,
    ) -> None:
        """A run ended (after its save): its status, size, timings and token usage."""
        self.runs.labels(status).inc()
        if chars > 0:
            self.streamed_characters.inc(chars)
        self.run_duration.observe(max(duration, 0.0))
        if ttft is not None:
            self.time_to_first_token.observe(max(ttft, 0.0))
        for kind in TOKEN_KINDS:
            value = (usage or {}).get(f"{kind}_tokens")
            if isinstance(value, int) and value > 0:
                self.tokens.labels(kind).inc(value)

    def reader_connected(self) -> None:
        """An SSE reader started reading a run."""
        self.readers.inc()

    def reader_disconnected(self, *, finished: bool) -> None:
        """An SSE reader stopped: after the end event (`finished`), or because it went away."""
        self.readers.dec()
        if not finished:
            self.client_disconnects.inc()

    def upstream_error(self, kind: str) -> None:
        """The upstream failed a run; `kind` is one of `UPSTREAM_ERROR_KINDS`."""
        self.upstream_errors.labels(kind if kind in UPSTREAM_ERROR_KINDS else "other").inc()

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then what caused it (explicit or implicit), a bounded number deep."""
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen and len(seen) < _MAX_CAUSES:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )


def _kind_of_status(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "http_5xx"
    if status >= 400:
        return "http_4xx"
    return "other"


def _kind_of_exception(exc: BaseException) -> str | None:
    # The SDK's errors exist only once the SDK is loaded; importing it here would load its
    # ~500 modules (~15 MB) into a process that may never talk to an upstream.
    sdk: Any = sys.modules.get("openai")
    if sdk is not None:
        if isinstance(exc, sdk.APIStatusError):
            status: Any = getattr(exc, "status_code", 0)
            return _kind_of_status(int(status))
        if isinstance(exc, sdk.APITimeoutError):
            return "timeout"
        if isinstance(exc, sdk.APIConnectionError):
            return "connection"
    # The SDK lets its HTTP client's errors through mid-stream. Which client that is changes
    # between SDK versions (httpx, httpx2), so they are recognised by their base classes' names.
    bases = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, TimeoutError) or "TimeoutException" in bases:
        return "timeout"
    if isinstance(exc, ConnectionError) or "TransportError" in bases:
        return "connection"
    if isinstance(exc, ValueError):  # the SDK's JSON decoding of a chunk
        return "malformed"
    return None


def _kind_of_message(message: str) -> str:
    """The fallback for an error without a telling cause: `ProviderError`'s wording."""
    found = _HTTP_STATUS.search(message)
    if found is not None:
        return _kind_of_status(int(found.group(1)))
    lowered = message.lower()
    if "timed out" in lowered or "went silent" in lowered:
        return "timeout"
    if "malformed" in lowered:
        return "malformed"
    if "connection" in lowered or "could not reach" in lowered:
        return "connection"
    return "other"


def classify_upstream_error(exc: BaseException) -> str:
    """Which of `UPSTREAM_ERROR_KINDS` an upstream failure is (a pure function).

    The exception chain decides (a `ProviderError` is raised `from` the SDK's or the HTTP
    client's error); failing that, the message's wording.
    """
    for cause in _causes(exc):
        kind = _kind_of_exception(cause)
        if kind is not None:
            return kind
    return _kind_of_message(str(exc))
