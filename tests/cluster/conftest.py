"""Fixtures for tests of several instances: a fresh PostgreSQL database and Redis prefix per
test, `start_cluster(n)` (processes, see instances.py) and `make_instance()` (in-process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from martlet_molt.config import Settings
from martlet_molt.testing import FakeUpstream
from tests.cluster.instances import Cluster, ClusterFactory, ClusterSettings
from tests.cluster.services import redis_prefix
from tests.databases import postgres_database_sync
from tests.gateway_server import GatewayServer

StartCluster = Callable[..., Cluster]


@pytest.fixture
def cluster_settings() -> Iterator[ClusterSettings]:
    """A new database and a Redis prefix only this test uses; both removed afterwards."""
    with postgres_database_sync() as database_url, redis_prefix() as prefix:
        yield ClusterSettings(database_url=database_url, redis_prefix=prefix)


@pytest.fixture
def clusters(
    upstream: FakeUpstream, model: str, tmp_path: Path, cluster_settings: ClusterSettings
) -> Iterator[ClusterFactory]:
    """The factory behind `start_cluster`, for tests that start single processes too."""
    factory = ClusterFactory(upstream, model, tmp_path, cluster_settings)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def start_cluster(clusters: ClusterFactory) -> StartCluster:
    """`start_cluster(n, balancer=True, **MARTLET_settings)`: n instances, nginx in front."""
    return clusters


InstanceFactory = Callable[..., GatewayServer]


@pytest.fixture
def make_instance(
    upstream: FakeUpstream, model: str, cluster_settings: ClusterSettings
) -> Iterator[InstanceFactory]:
    """Start in-process instances of one deployment (real uvicorn servers on their own ports,
    sharing the test's database and Redis prefix); all stop at the end of the test."""
    started: list[GatewayServer] = []

    def factory(**overrides: Any) -> GatewayServer:
        values: dict[str, Any] = {
            "openai_base_url": upstream.base_url,
            "openai_api_key": "test-key",
            "model": model,
            "database_url": cluster_settings.database_url,
            "redis_url": cluster_settings.redis_url,
            "redis_prefix": cluster_settings.redis_prefix,
            "instance_id": f"instance-{len(started) + 1}",
            "run_lease_seconds": 2.0,
            "checkpoint_seconds": 0.2,
            "eviction_interval_seconds": 0.5,
            "shutdown_grace_seconds": 5,
        }
        values.update(overrides)
        server = GatewayServer(Settings(_env_file=None, **values))  # pyright: ignore[reportCallIssue]
        started.append(server.start(timeout=20))
        return server

    yield factory
    for server in reversed(started):
        server.stop()
