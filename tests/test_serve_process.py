"""`martlet-molt serve` as its own process: what only the real server does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from martlet_molt.testing import FakeUpstream
from tests.conftest import script
from tests.process_gateway import ProcessGateways, process_gateways

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def processes(upstream: FakeUpstream, model: str, tmp_path: Path) -> Iterator[ProcessGateways]:
    """Gateway processes for this test; any still running are killed afterwards."""
    with process_gateways(upstream, model, tmp_path) as factory:
        yield factory


def test_the_server_freezes_its_start_up_heap_and_still_answers(
    processes: ProcessGateways, upstream: FakeUpstream, model: str
) -> None:
    """After start-up the server moves what it built so far out of the cyclic collector's
    reach (so full collections do not pause streams); replies are unaffected."""
    sent = script(upstream, model, token_count=5)
    gateway = processes(MARTLET_LOG_LEVEL="DEBUG")
    reply = httpx.post(f"{gateway.url}/chat", json={"message": "hi"}, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.json()["reply"] == "".join(sent.chunks)
    assert "objects frozen out of garbage collection" in gateway.log_text()
