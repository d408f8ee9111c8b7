"""What every scenario shares: the suite's context, the rows of the results table, and `Stack`,
which starts a scenario's processes, runs load-client jobs under a `Monitor`, and stops it all."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.client import LoadClient
from bench.procs import (
    Monitor,
    Service,
    start_gateway,
    start_passthrough,
    start_upstream,
    wait_gateway,
    wait_upstream,
)
from bench.profiling import Profiler


@dataclass(frozen=True)
class Scenario:
    """Which benchmark scenario a module is: its number (the results table's, `--only`'s and
    docs/BENCHMARKS.md's) and its title."""

    number: int
    title: str

    @property
    def label(self) -> str:
        """How the results table names it: "7 long replies"."""
        return f"{self.number} {self.title}"


@dataclass
class Row:
    """One line of the results table: `measured` is the gateway's figure, `baseline` what it is
    compared with (the direct-to-upstream figure unless the metric says otherwise), `ratio`
    measured / baseline."""

    scenario: str
    metric: str
    unit: str
    measured: float
    target: str = ""
    baseline: float | None = None
    ratio: float | None = None
    passed: bool | None = None
    note: str = ""  # why a verdict is withheld, or what to keep in mind

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (NaN becomes None)."""
        out = asdict(self)
        for key in ("measured", "baseline", "ratio"):
            value = out[key]
            if isinstance(value, float) and math.isnan(value):
                out[key] = None
        return out


@dataclass
class Context:
    """The suite's settings and everything the scenarios produce."""

    quick: bool
    profile: bool
    workdir: Path
    rows: list[Row] = field(default_factory=list[Row])
    raw: dict[str, Any] = field(default_factory=dict[str, Any])
    plots: dict[str, Any] = field(default_factory=dict[str, Any])
    profiles: dict[str, Any] = field(default_factory=dict[str, Any])
    timings: dict[str, float] = field(default_factory=dict[str, float])
    trials: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    keep_dir: Path | None = None  # where raw profiles (collapsed stacks) are kept
    gateway_env: dict[str, str] = field(default_factory=dict[str, str])  # --gateway-env

    def note_trial(self, stack: str, job: str, monitor: Monitor) -> None:
        """Keep CPU use, run-queue wait and load average of every job, to judge how clean the
        machine was (other processes competing for the CPUs show up as run-queue wait)."""
        self.trials.append(
            {
                "stack": stack,
                "job": job,
                "wall": monitor.wall,
                "cpu": monitor.cpu,
                "run_queue_wait": monitor.waited,
                "loadavg_1m": os.getloadavg()[0],
            }
        )

    def pick(self, quick: Any, full: Any) -> Any:
        """The quick or the full value of a parameter."""
        return quick if self.quick else full

    def add(self, row: Row) -> Row:
        """Append a row to the results table."""
        self.rows.append(row)
        return row

    @classmethod
    def create(cls, *, quick: bool, profile: bool) -> Context:
        """A context with a fresh temporary working directory."""
        return cls(quick=quick, profile=profile, workdir=Path(tempfile.mkdtemp(prefix="bench-")))

    def cleanup(self) -> None:
        """Remove the temporary working directory."""
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class Trial:
    """One job's result and what the monitor saw while it ran."""

    result: dict[str, Any]
    cpu: dict[str, float]
    waited: dict[str, float]
    wall: float
    peak_rss: dict[str, int]
    first_rss: dict[str, int]
    timeline: list[tuple[float, int]]
    # CPU seconds up to the moment the job reported as `streams_ended`, if it reported one:
    # the streams alone, without the job's checks that follow them.
    cpu_streaming: dict[str, float] | None = None


def wind_up(
    ctx: Context,
    name: str,
    profiler: Profiler | None,
    services: dict[str, Service],
    *,
    failed: bool,
) -> None:
    """What every stack does before it stops its processes: keep the profile it took, and show
    the log tails of a stack whose scenario failed."""
    if profiler is not None:
        ctx.profiles.setdefault(name, []).append(profiler.stop())
        if ctx.keep_dir is not None and profiler.output.exists():
            ctx.keep_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(profiler.output, ctx.keep_dir / f"{name}.collapsed")
    if failed:
        for service in services.values():
            print(f"--- {service.name} log tail ---\n{service.log_tail()}")


class Stack:
    """A scenario's processes: fake upstream, gateway, optionally the pass-through proxy, and a
    fresh load client; everything is stopped on exit, whatever happened."""

    def __init__(
        self,
        ctx: Context,
        name: str,
        *,
        upstream: dict[str, Any],
        gateway: dict[str, str] | None = None,
        passthrough: bool = False,
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.logdir = ctx.workdir / f"{name}-{time.monotonic_ns()}"
        self.logdir.mkdir(parents=True)
        self.upstream_options = upstream
        self.gateway_settings = {**(gateway or {}), **ctx.gateway_env}
        self.want_passthrough = passthrough
        self.services: dict[str, Service] = {}
        self.client: LoadClient | None = None
        self.profiler: Profiler | None = None

    def __enter__(self) -> Stack:
        try:
            # Start everything at once; the gateway calls the upstream only when a chat starts.
            up = start_upstream(self.logdir, **self.upstream_options, wait=False)
            self.services["upstream"] = up
            gw = start_gateway(self.logdir, up, self.gateway_settings, wait=False)
            self.services["gateway"] = gw
            self.client = LoadClient()
            wait_upstream(up)
            if self.want_passthrough:
                self.services["passthrough"] = start_passthrough(self.logdir, up)
            wait_gateway(gw)
            if self.ctx.profile:
                self.profiler = Profiler(self.services["gateway"].pid, self.logdir / "gw.prof")
                self.profiler.start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        wind_up(self.ctx, self.name, self.profiler, self.services, failed=exc is not None)
        self._stop()

    def _stop(self) -> None:
        if self.client is not None:
            self.client.close()
        for service in reversed(list(self.services.values())):
            service.stop()

    @property
    def gateway(self) -> Service:
        """The gateway process."""
        return self.services["gateway"]

    def port(self, name: str) -> int:
        """The port of one of the stack's servers."""
        return self.services[name].port

    def run(self, job: str, *, limit: float, **kwargs: Any) -> Trial:
        """Run one load-client job while sampling every server's RSS and CPU."""
        assert self.client is not None
        watched: dict[str, Any] = {**self.services, "client": self.client.ps}
        with Monitor(watched) as monitor:
            result = self.client.call(job, limit=limit, **kwargs)
        self.ctx.note_trial(self.name, job, monitor)
        for service in self.services.values():
            if not service.alive():
                raise RuntimeError(f"{service.name} died:\n{service.log_tail()}")
        return Trial(
            result=result,
            cpu=monitor.cpu,
            waited=monitor.waited,
            wall=monitor.wall,
            peak_rss={name: monitor.peak_rss(name) for name in watched},
            first_rss={name: monitor.first_rss(name) for name in watched},
            timeline=monitor.timeline("gateway"),
            cpu_streaming=(
                monitor.cpu_until(result["streams_ended"]) if "streams_ended" in result else None
            ),
        )

    def idle(self, seconds: float) -> list[tuple[float, int]]:
        """Wait, sampling the gateway's RSS; returns the samples."""
        with Monitor({"gateway": self.gateway}, interval=0.1) as monitor:
            time.sleep(seconds)
        return monitor.timeline("gateway")
