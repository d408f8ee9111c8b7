"""What a several-instance scenario runs on: a Redis server of its own, fresh PostgreSQL
databases, and `ClusterStack`, which starts the fake upstream and several gateways (embedded on
SQLite, or sharing Redis and a database), runs load-client jobs under a `Monitor`, and stops
it all, dropping the databases.

The Redis server is the scenario's own (`redis-server` on a free port, no persistence): its
command counters and memory then count only the gateways under test, even while other work
uses the machine's Redis. Each stack still gives its gateways a unique key prefix.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis

from bench.client import LoadClient
from bench.harness import Context, Trial, wind_up
from bench.procs import (
    Monitor,
    Service,
    start_gateway,
    start_redis,
    start_upstream,
    stop_all,
    wait_gateway,
    wait_upstream,
)
from bench.profiling import Profiler

POSTGRES_URL = os.environ.get(
    "MARTLET_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
"""The PostgreSQL server the scenario makes its databases on (trust auth, a superuser)."""
SERVICE_TIMEOUT = 5
MEMORY_INTERVAL = 0.1
SCRIPT_COMMANDS = frozenset({"hmget", "xrevrange", "xadd", "hset", "pexpire", "exists", "hget"})
"""Commands only the broker's Lua scripts call (`broker/scripts.py`): counted by the server,
never sent by a gateway."""
OWN_COMMANDS = frozenset({"info", "config|resetstat", "config", "ping"})
"""What the benchmark itself sends to Redis (`ping`: readiness; gateways ping only while
Redis is away)."""


def unavailable() -> str:
    """Why the scenario cannot run here ("" if it can): no `redis-server`, no PostgreSQL."""
    if shutil.which("redis-server") is None:
        return "no redis-server on PATH"
    try:
        asyncio.run(_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"PostgreSQL at {POSTGRES_URL} does not answer: {type(exc).__name__}"
    return ""


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL, timeout=SERVICE_TIMEOUT)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _database_url(name: str) -> str:
    """The gateway's URL (SQLAlchemy, asyncpg driver) of database `name` on the server."""
    parts = urlsplit(POSTGRES_URL)
    return urlunsplit(("postgresql+asyncpg", parts.netloc, f"/{name}", "", ""))


def plain_url(url: str) -> str:
    """A SQLAlchemy URL as asyncpg takes it."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@dataclass
class GatewaySpec:
    """One gateway of a stack: `database` names a PostgreSQL database shared by every gateway
    that names it (with Redis); None is an embedded gateway (SQLite, no Redis)."""

    database: str | None = None
    workers: int = 1
    settings: dict[str, str] = field(default_factory=dict[str, str])


def commands(info: dict[str, Any]) -> dict[str, int]:
    """`INFO commandstats` as `{command: calls}`."""
    return {
        key.removeprefix("cmdstat_"): int(value["calls"])
        for key, value in info.items()
        if key.startswith("cmdstat_")
    }


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls per command between two `commands` readings, the benchmark's own left out."""
    out = {name: calls - before.get(name, 0) for name, calls in after.items()}
    return {name: n for name, n in out.items() if n and name not in OWN_COMMANDS}


class MemorySampler:
    """Samples Redis `used_memory` every `MEMORY_INTERVAL` seconds while the block runs."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.samples: list[tuple[float, int]] = []  # (seconds since the start, bytes)
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-memory", daemon=True)

    def _used(self) -> int:
        return int(self.client.info("memory")["used_memory"])  # pyright: ignore[reportUnknownArgumentType]

    def _sample(self) -> None:
        self.samples.append((time.monotonic() - self._t0, self._used()))

    def _run(self) -> None:
        while not self._stop.wait(MEMORY_INTERVAL):
            self._sample()

    def __enter__(self) -> MemorySampler:
        self._t0 = time.monotonic()
        self._sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def first(self) -> int:
        """`used_memory` when the block started."""
        return self.samples[0][1]

    @property
    def last(self) -> int:
        """`used_memory` when the block ended."""
        return self.samples[-1][1]

    def at(self, seconds: float) -> int:
        """`used_memory` sampled nearest to `seconds` after the start."""
        return min(self.samples, key=lambda sample: abs(sample[0] - seconds))[1]


class ClusterStack:
    """A scenario's processes: fake upstream, a Redis server, the gateways of `gateways` (by
    name), and a fresh load client. Every process is stopped, every database dropped on exit,
    whatever happened."""

    def __init__(
        self,
        ctx: Context,
        name: str,
        *,
        upstream: dict[str, Any],
        gateways: dict[str, GatewaySpec],
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.logdir = ctx.workdir / f"{name}-{time.monotonic_ns()}"
        self.logdir.mkdir(parents=True)
        self.upstream_options = upstream
        self.specs = gateways
        self.prefix = f"bench-{uuid.uuid4().hex[:12]}"
        self.databases: dict[str, str] = {}  # name in the specs -> real database name
        self.services: dict[str, Service] = {}
        self.client: LoadClient | None = None
        self.redis: redis.Redis | None = None
        self.profiler: Profiler | None = None

    def __enter__(self) -> ClusterStack:
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def _start(self) -> None:
        up = start_upstream(self.logdir, **self.upstream_options, wait=False)
        self.services["upstream"] = up
        server = start_redis(self.logdir)
        self.services["redis"] = server
        self.redis = redis.Redis(port=server.port, socket_timeout=SERVICE_TIMEOUT)
        for spec in self.specs.values():
            if spec.database is not None and spec.database not in self.databases:
                real = f"bench_{spec.database}_{uuid.uuid4().hex[:12]}"
                asyncio.run(_admin(f'CREATE DATABASE "{real}"'))
                self.databases[spec.database] = real
        for name, spec in self.specs.items():
            settings = {**spec.settings, **self.ctx.gateway_env}
            if spec.database is not None:
                settings |= {
                    "MARTLET_DATABASE_URL": self.database_url(spec.database),
                    "MARTLET_REDIS_URL": f"redis://127.0.0.1:{server.port}/0",
                    "MARTLET_REDIS_PREFIX": self.prefix,
                    "MARTLET_INSTANCE_ID": f"bench-{name}",
                }
            self.services[name] = start_gateway(
                self.logdir, up, settings, wait=False, name=name, workers=spec.workers
            )
        self.client = LoadClient()
        wait_upstream(up)
        for name, spec in self.specs.items():
            wait_gateway(self.services[name], workers=spec.workers)
        if self.ctx.profile:
            target = next(iter(self.specs))
            output = self.logdir / f"{target}.prof"
            self.profiler = Profiler(self.services[target].pid, output)
            self.profiler.start()

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
        # The gateways first (they drain into Redis on their way out), all at once.
        stop_all([s for name, s in self.services.items() if name not in ("upstream", "redis")])
        stop_all([s for name, s in self.services.items() if name in ("upstream", "redis")])
        if self.redis is not None:
            self.redis.close()
        for real in self.databases.values():
            try:
                asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{real}" WITH (FORCE)'))
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                print(f"could not drop database {real}: {exc!r}")

    def database_url(self, database: str) -> str:
        """The SQLAlchemy URL of one of the stack's databases (its name in the specs)."""
        return _database_url(self.databases[database])

    def port(self, name: str) -> int:
        """The port of one of the stack's servers."""
        return self.services[name].port

    def gateway(self, name: str) -> Service:
        """One of the stack's gateways."""
        return self.services[name]

    def redis_commands(self) -> dict[str, int]:
        """Calls per command since the Redis server started."""
        assert self.redis is not None
        return commands(self.redis.info("commandstats"))  # pyright: ignore[reportUnknownArgumentType]

    def redis_stat(self, key: str) -> int:
        """One field of `INFO stats` (e.g. `total_commands_processed`)."""
        assert self.redis is not None
        return int(self.redis.info("stats")[key])  # pyright: ignore[reportUnknownArgumentType]

    def redis_memory(self) -> MemorySampler:
        """A sampler of the Redis server's `used_memory` (use as a `with` block)."""
        assert self.redis is not None
        return MemorySampler(self.redis)

    def run(self, job: str, *, limit: float, **kwargs: Any) -> Trial:
        """Run one load-client job while sampling every server's RSS and CPU. The trial's
        `gateway` CPU and run-queue wait are the sums over the stack's gateways (a gateway
        with workers counts its supervisor only)."""
        assert self.client is not None
        watched: dict[str, Any] = {**self.services, "client": self.client.ps}
        with Monitor(watched) as monitor:
            result = self.client.call(job, limit=limit, **kwargs)
        for measure in (monitor.cpu, monitor.waited):
            measure["gateway"] = math.fsum(measure.get(name, 0.0) for name in self.specs)
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
            timeline=[],
        )
