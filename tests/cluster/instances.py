"""A cluster for one test: N real gateway processes on one PostgreSQL database and one Redis
prefix, pointed at the in-process fake upstream, optionally behind nginx.

    cluster = start_cluster(2)             # the `start_cluster` fixture (conftest.py)
    cluster.instances[0].url               # each instance: a tests.process_gateway.GatewayProcess
    cluster.balancer_url                   # nginx in front of them all
    cluster.instances[1].kill() / .pause() / .resume() / .terminate() / .restart()

Instances start side by side (the store creates its schema under an advisory lock); every
process is killed and nginx stopped when the test ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from martlet_molt.testing import FakeUpstream
from tests.cluster.balancer import Balancer
from tests.cluster.services import REDIS_URL
from tests.process_gateway import GatewayProcess, clean_env


@dataclass
class ClusterSettings:
    """Where the instances of one test keep their shared state."""

    database_url: str
    redis_prefix: str
    redis_url: str = REDIS_URL


@dataclass
class Cluster:
    """Running instances (and nginx, if asked for) of one test."""

    instances: list[GatewayProcess]
    balancer: Balancer | None = None

    @property
    def urls(self) -> list[str]:
        """Each instance's root URL."""
        return [instance.url for instance in self.instances]

    @property
    def balancer_url(self) -> str:
        """nginx's root URL."""
        if self.balancer is None:
            raise RuntimeError("this cluster was started without a balancer")
        return self.balancer.url

    def log_text(self) -> str:
        """Every instance's log and nginx's error log, for assertion messages."""
        parts = [f"--- {i.env['MARTLET_INSTANCE_ID']}\n{i.log_text()}" for i in self.instances]
        if self.balancer is not None:
            parts.append(f"--- nginx\n{self.balancer.error_log()}")
        return "\n".join(parts)


@dataclass
class ClusterFactory:
    """Starts clusters for one test; `close` ends every process they started."""

    upstream: FakeUpstream
    model: str
    directory: Path
    shared: ClusterSettings
    started: list[Cluster] = field(default_factory=lambda: [])
    processes: list[GatewayProcess] = field(default_factory=lambda: [])

    def instance(self, name: str, *, args: Sequence[str] = (), **settings: str) -> GatewayProcess:
        """One gateway process (not started) on the shared database, Redis and upstream."""
        env = clean_env(
            {
                "OPENAI_BASE_URL": self.upstream.base_url,
                "OPENAI_API_KEY": "test-key",
                "MARTLET_MODEL": self.model,
                "MARTLET_DATABASE_URL": self.shared.database_url,
                "MARTLET_REDIS_URL": self.shared.redis_url,
                "MARTLET_REDIS_PREFIX": self.shared.redis_prefix,
                "MARTLET_INSTANCE_ID": name,
                "MARTLET_SHUTDOWN_GRACE_SECONDS": "5",
                "MARTLET_LOG_LEVEL": "INFO",
                **settings,
            }
        )
        process = GatewayProcess(
            env=env,
            cwd=self.directory,
            db_path=None,
            log_path=self.directory / f"{name}.log",
            args=args,
        )
        self.processes.append(process)
        return process

    def __call__(self, count: int, *, balancer: bool = True, **settings: str) -> Cluster:
        """Start `count` instances (with these extra settings), then nginx in front of them."""
        instances = [self.instance(f"instance-{n}", **settings) for n in range(1, count + 1)]
        cluster = Cluster(instances)
        self.started.append(cluster)
        for instance in instances:
            instance.launch()
        for instance in instances:
            instance.wait_ready()
        if balancer:
            servers = [f"127.0.0.1:{instance.port}" for instance in instances]
            cluster.balancer = Balancer(self.directory / "nginx", servers).start()
        return cluster

    def close(self) -> None:
        """Stop nginx and kill every instance still running, with its children (the workers
        of `serve --workers`)."""
        for cluster in self.started:
            if cluster.balancer is not None:
                cluster.balancer.stop()
        for instance in self.processes:
            if not instance.alive:
                continue
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(instance.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        child.kill()
            with contextlib.suppress(Exception):
                instance.resume()  # a paused process must be able to die
                instance.kill()
