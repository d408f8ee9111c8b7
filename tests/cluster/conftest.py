"""Fixtures for tests of several instances: a fresh PostgreSQL database and Redis prefix per
test, and `start_cluster(n)` (see instances.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster.instances import Cluster, ClusterFactory, ClusterSettings
from tests.cluster.services import postgres_database, redis_prefix
from tests.fake_upstream import FakeUpstream

StartCluster = Callable[..., Cluster]


@pytest.fixture
def cluster_settings() -> Iterator[ClusterSettings]:
    """A new database and a Redis prefix only this test uses; both removed afterwards."""
    with postgres_database() as database_url, redis_prefix() as prefix:
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
