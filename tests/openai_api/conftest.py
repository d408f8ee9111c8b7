"""OpenAI's own Python SDK as the client, strict: every answer and event must parse."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from openai import OpenAI
from openai.types.responses import Response

from tests.gateway_server import GatewayServer

TIMEOUT = 10.0
FINAL = ("completed", "failed", "cancelled", "incomplete")


def sdk_for(gateway: GatewayServer, api_key: str = "unused") -> OpenAI:
    """The official client, pointed at the gateway, validating every shape strictly."""
    return OpenAI(
        base_url=f"{gateway.url}/v1",
        api_key=api_key,
        max_retries=0,
        timeout=TIMEOUT,
        _strict_response_validation=True,
    )


@pytest.fixture
def sdk(gateway: GatewayServer) -> Iterator[OpenAI]:
    """A strict SDK client of the default gateway."""
    with sdk_for(gateway) as client:
        yield client


def poll_until_final(client: OpenAI, response_id: str) -> Response:
    """What a background-mode script does: retrieve until the response has ended (bounded)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        response = client.responses.retrieve(response_id)
        if response.status in FINAL:
            return response
        assert time.monotonic() < deadline, f"still {response.status}"
        time.sleep(0.02)
