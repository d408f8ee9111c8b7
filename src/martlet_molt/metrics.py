"""Prometheus metrics, counted at domain events (a run starts or ends, a reader comes or goes,
the upstream fails), never per chunk: the streaming hot path is untouched.

Each `Metrics` owns its own `CollectorRegistry`, so several apps in one process (tests) never
share or clash over metrics. `GET /metrics` serves `Metrics.exposition()`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from martlet_molt.core.status import RunStatus
from martlet_molt.errors import ProviderError, UpstreamErrorKind

UPSTREAM_ERROR_KINDS: Final[tuple[UpstreamErrorKind, ...]] = get_args(UpstreamErrorKind)
"""Every `kind` label of `martlet_upstream_errors_total`."""

TOKEN_KINDS: Final = ("prompt", "completion")

TTFT_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS: Final = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


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
        self.tool_calls = Counter(
            "martlet_tool_calls_total",
            "Tool calls, by tool and outcome (`done` or `failed`).",
            ["tool", "status"],
            registry=r,
        )
        self.tool_call_duration = Histogram(
            "martlet_tool_call_seconds",
            "How long tool calls took, by tool.",
            ["tool"],
            buckets=DURATION_BUCKETS,
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

    def tool_called(self, tool: str, failed: bool, seconds: float) -> None:
        """A tool call ended (tool names come from configuration, so their number is bounded)."""
        self.tool_calls.labels(tool, "failed" if failed else "done").inc()
        self.tool_call_duration.labels(tool).observe(seconds)

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)


def classify_upstream_error(exc: BaseException) -> UpstreamErrorKind:
    """Which of `UPSTREAM_ERROR_KINDS` an upstream failure is: a `ProviderError`'s own `kind`
    (the provider raises the subclass that names the cause); anything else is "other"."""
    return exc.kind if isinstance(exc, ProviderError) else "other"
