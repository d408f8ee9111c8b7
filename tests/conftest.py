"""Shared fixtures: one fake upstream per test session, and a factory of real gateways."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from martlet_molt.config import Settings
from martlet_molt.testing import FakeUpstream, Script
from tests.gateway_server import GatewayServer

_model_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    """The fake OpenAI-compatible server; each test scripts it through its own model name."""
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def model(upstream: FakeUpstream) -> Iterator[str]:
    """A model name only this test uses, so scripts never leak between tests."""
    name = f"model-{next(_model_numbers)}"
    yield name
    upstream.scripts_by_model.pop(name, None)


def script(upstream: FakeUpstream, model: str, **fields: Any) -> Script:
    """Make the upstream answer this test's model with a script; returns it."""
    chosen = Script(**fields)
    upstream.scripts_by_model[model] = chosen
    return chosen


GatewayFactory = Callable[..., GatewayServer]


@pytest.fixture
def make_gateway(upstream: FakeUpstream, model: str, tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start real gateways (SQLite in tmp_path, pointed at the fake upstream); all stop at
    the end of the test."""
    started: list[GatewayServer] = []

    def factory(**overrides: Any) -> GatewayServer:
        values: dict[str, Any] = {
            "openai_base_url": upstream.base_url,
            "openai_api_key": "test-key",
            "model": model,
            "database_url": f"sqlite:///{tmp_path / 'martlet.db'}",
            "eviction_interval_seconds": 0.5,
            "shutdown_grace_seconds": 5,
        }
        values.update(overrides)
        server = GatewayServer(Settings(_env_file=None, **values)).start()  # pyright: ignore[reportCallIssue]
        started.append(server)
        return server

    yield factory
    for server in reversed(started):
        server.stop()


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> GatewayServer:
    """A gateway with default settings."""
    return make_gateway()
