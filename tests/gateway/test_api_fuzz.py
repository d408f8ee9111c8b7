"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis).

The schema is the one the gateway serves at `/openapi.json` (`create_app(...).openapi()`, built
here without starting anything). Every operation gets valid and invalid requests (wrong types,
unknown fields, odd strings, missing parts) sent over HTTP to a real gateway (uvicorn, SQLite)
that answers through the fake upstream with a short script, so chat and its streams end fast.

Checks: no 5xx; every status code is documented for its operation; every JSON body matches
the documented schema (errors included: `{"error": {"code", "message", "details"}}`); every
content type is documented. The run is seeded and derandomized, so it is the same each time.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from martlet_molt.app import create_app
from martlet_molt.config import Settings
from martlet_molt.testing import FakeUpstream, Script
from tests.gateway_server import GatewayServer

pytestmark = pytest.mark.timeout(60)

MODEL = "fuzz-model"
MAX_EXAMPLES = 30
"""Generated cases per operation (and per mode, valid and invalid): the run stays well under a
minute on two cores."""

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20251125,
        "generation": {
            "mode": "all",
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
        },
        "phases": {"stateful": {"enabled": False}},
        "request-timeout": 5,
        "max-stream-events": 20,
    }
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

schema = schemathesis.openapi.from_dict(
    create_app(Settings(_env_file=None)).openapi(),  # pyright: ignore[reportCallIssue]
    config=CONFIG,
)


@pytest.fixture(scope="module")
def gateway_url(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real gateway answering every chat with a two-token reply; yields its URL."""
    upstream.scripts_by_model[MODEL] = Script(tokens=["fuzz", "ed"])
    database = tmp_path_factory.mktemp("fuzz") / "martlet.db"
    settings = Settings(
        _env_file=None,  # pyright: ignore[reportCallIssue]
        openai_base_url=upstream.base_url,
        openai_api_key="test-key",
        model=MODEL,
        database_url=f"sqlite:///{database}",
        max_message_chars=2_000,
        max_body_bytes=64 * 1024,
        sse_ping_seconds=0.2,
        eviction_interval_seconds=0.5,
        shutdown_grace_seconds=5,
    )
    with GatewayServer(settings) as server:
        yield server.url
    upstream.scripts_by_model.pop(MODEL, None)


@pytest.fixture(scope="module")
def finished_run_id(gateway_url: str) -> str:
    """A run that has ended, so the run endpoints are fuzzed on a real run too."""
    response = httpx.post(f"{gateway_url}/chat", json={"message": "hello"}, timeout=5)
    assert response.status_code == 200, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def test_served_schema_is_the_fuzzed_one(gateway_url: str) -> None:
    served = httpx.get(f"{gateway_url}/openapi.json", timeout=5).json()
    assert served == schema.raw_schema


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_answers_every_request_as_documented(case: schemathesis.Case, gateway_url: str) -> None:
    case.call_and_validate(base_url=gateway_url, checks=CHECKS, timeout=5)


@schema.include(path_regex="^/runs/").parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_run_endpoints_answer_as_documented_for_a_real_run(
    case: schemathesis.Case, gateway_url: str, finished_run_id: str
) -> None:
    """The same, naming a run that exists: resume points, formats and cancel on a real log."""
    case.path_parameters["run_id"] = finished_run_id
    case.call_and_validate(base_url=gateway_url, checks=CHECKS, timeout=5)
