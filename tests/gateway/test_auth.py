"""API keys, principals, CORS and the bind check: real gateways (uvicorn, SQLite) against the
fake upstream, driven with httpx; the CLI's refusal checked in a real subprocess."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from loguru import logger

from martlet_molt.config import Settings
from martlet_molt.errors import Unauthorized
from martlet_molt.gateway.auth import (
    ANONYMOUS,
    ApiKeys,
    authenticate,
    check_bind,
    digest_of,
    is_loopback,
    principal_of,
)
from martlet_molt.logs import redact
from martlet_molt.testing import FakeUpstream
from tests.conftest import GatewayFactory, script
from tests.gateway_server import GatewayServer
from tests.sse_client import read_sse

KEY1 = "sk-martlet-test-alpha-7c1f"
KEY2 = "sk-martlet-test-bravo-92d0"
KEYS = f"{KEY1}, {KEY2}"
ORIGIN = "https://app.example"
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "interrupted"})
TIMEOUT = 4.0
"""Seconds any single wait in these tests may take."""
PYTHON = Path(sys.executable)

Json = dict[str, Any]


def client_for(gateway: GatewayServer, key: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.AsyncClient(base_url=gateway.url, timeout=5.0, headers=headers)


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # pyright: ignore[reportCallIssue]


def assert_unauthorized(response: httpx.Response) -> str:
    """Check a 401 answer's shape; returns its message."""
    assert response.status_code == 401, (response.request.url, response.text)
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == "unauthorized"
    message: str = body["error"]["message"]
    return message


async def chat(client: httpx.AsyncClient, message: str, session_id: str | None = None) -> Json:
    body: Json = {"message": message}
    if session_id is not None:
        body["session_id"] = session_id
    response = await client.post("/chat", json=body)
    assert response.status_code == 200, response.text
    result: Json = response.json()
    return result


# --------------------------------------------------------------------------- no key, wrong key


@pytest.mark.asyncio
async def test_every_endpoint_but_health_and_docs_needs_a_key(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(api_keys=KEYS)
    script(upstream, model, tokens=["never"])
    async with client_for(gateway) as anonymous:
        guarded = [
            anonymous.post("/chat", json={"message": "hi"}),
            anonymous.post("/chat/stream", json={"message": "hi"}),
            anonymous.get("/runs/run_x"),
            anonymous.get("/runs/run_x/stream"),
            anonymous.post("/runs/run_x/cancel"),
            anonymous.get("/sessions"),
            anonymous.get("/sessions/s1"),
            anonymous.delete("/sessions/s1"),
            anonymous.get("/metrics"),
        ]
        for response in await asyncio.gather(*guarded):
            assert "Authorization: Bearer" in assert_unauthorized(response)

        health = await anonymous.get("/healthz")
        assert health.status_code == 200, health.text
        assert health.json()["status"] == "ok"
        for path in ("/openapi.json", "/docs"):
            assert (await anonymous.get(path)).status_code == 200, path
        assert (await anonymous.get("/readyz")).status_code in (200, 503)
    # Refused before anything was started: the upstream never heard of it.
    assert not [r for r in upstream.records if r.model == model]


@pytest.mark.asyncio
async def test_a_wrong_key_or_scheme_is_refused(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(api_keys=KEYS)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=5.0) as client:
        for authorization in (f"Bearer {KEY1}x", "Bearer k1", f"Basic {KEY1}", "Bearer"):
            response = await client.get("/sessions", headers={"Authorization": authorization})
            assert_unauthorized(response)
        # A configured key is found whatever the spaces around it in MARTLET_API_KEYS.
        for key in (KEY1, KEY2):
            response = await client.get("/sessions", headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200, response.text


@pytest.mark.asyncio
async def test_metrics_needs_the_key_when_it_exists(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(api_keys=KEYS)
    async with client_for(gateway) as anonymous, client_for(gateway, KEY1) as keyed:
        assert_unauthorized(await anonymous.get("/metrics"))
        assert (await keyed.get("/metrics")).status_code == 200


# --------------------------------------------------------------------------- principals


@pytest.mark.asyncio
async def test_another_principal_gets_404_for_sessions_and_runs(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(api_keys=KEYS)
    script(upstream, model, tokens=["Hello", " there"])
    async with (
        client_for(gateway, KEY1) as one,
        client_for(gateway, KEY2) as two,
        client_for(gateway) as anonymous,
    ):
        mine = await chat(one, "hi from one", session_id="shared-name")
        run_id, session_id = mine["run_id"], mine["session_id"]
        assert mine["reply"] == "Hello there"
        theirs = await chat(two, "hi from two")

        # Key 2 cannot see, read, stream, cancel or delete key 1's things.
        assert (await two.get(f"/runs/{run_id}")).status_code == 404
        stream = await read_sse(two, "GET", f"/runs/{run_id}/stream")
        assert stream.status_code == 404
        queried = await read_sse(anonymous, "GET", f"/runs/{run_id}/stream?api_key={KEY2}")
        assert queried.status_code == 404
        assert (await two.post(f"/runs/{run_id}/cancel")).status_code == 404
        assert (await two.get(f"/sessions/{session_id}")).status_code == 404
        assert (await two.delete(f"/sessions/{session_id}")).status_code == 404
        # Nor add to key 1's session by naming it.
        intruder = await two.post("/chat", json={"message": "me too", "session_id": session_id})
        assert intruder.status_code == 404, intruder.text
        listed = (await two.get("/sessions")).json()
        assert [s["session_id"] for s in listed["sessions"]] == [theirs["session_id"]]
        assert listed["total"] == 1

        # Key 1 can do all of it, and nothing of key 2's leaked into its session.
        run = await one.get(f"/runs/{run_id}")
        assert run.status_code == 200
        assert run.json()["content"] == "Hello there"
        stream = await read_sse(one, "GET", f"/runs/{run_id}/stream")
        assert stream.status_code == 200
        assert stream.texts == ["Hello", " there", "[DONE]"]
        cancelled = await one.post(f"/runs/{run_id}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "completed"
        session = await one.get(f"/sessions/{session_id}")
        assert session.status_code == 200
        assert [m["content"] for m in session.json()["messages"]] == ["hi from one", "Hello there"]
        listed = (await one.get("/sessions")).json()
        assert [s["session_id"] for s in listed["sessions"]] == [session_id]
        assert (await one.delete(f"/sessions/{session_id}")).status_code == 204
        assert (await one.get(f"/sessions/{session_id}")).status_code == 404
        # Key 2's session is untouched.
        assert (await two.get(f"/sessions/{theirs['session_id']}")).status_code == 200


@pytest.mark.asyncio
async def test_a_busy_session_of_another_principal_is_404_not_409(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    """A 409 would name the other principal's active run; the session must look absent."""
    gateway = make_gateway(api_keys=KEYS)
    script(upstream, model, tokens=["a", "b", "c"], stall_after=1)
    async with client_for(gateway, KEY1) as one, client_for(gateway, KEY2) as two:
        started = await read_sse(
            one,
            "POST",
            "/chat/stream",
            json_body={"message": "long one", "session_id": "busy"},
            stop_after=1,
        )
        assert started.status_code == 200
        run_id = started.headers["x-run-id"]
        try:
            again = await one.post("/chat", json={"message": "again", "session_id": "busy"})
            assert again.status_code == 409
            assert again.json()["error"]["details"]["active_run_id"] == run_id

            intruder = await two.post("/chat", json={"message": "hey", "session_id": "busy"})
            assert intruder.status_code == 404, intruder.text
            assert run_id not in intruder.text
        finally:
            cancelled = await one.post(f"/runs/{run_id}/cancel")
            assert cancelled.status_code == 200, cancelled.text


@pytest.mark.asyncio
async def test_a_retried_request_id_of_another_principal_does_not_reveal_the_run(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(api_keys=KEYS)
    script(upstream, model, tokens=["ok"])
    body = {"message": "hi", "session_id": "retried", "client_request_id": "req-1"}
    async with client_for(gateway, KEY1) as one, client_for(gateway, KEY2) as two:
        first = await one.post("/chat", json=body)
        assert first.status_code == 200, first.text
        run_id = first.json()["run_id"]
        retried = await one.post("/chat", json=body)
        assert retried.json()["run_id"] == run_id

        intruder = await two.post("/chat", json=body)
        assert intruder.status_code == 404, intruder.text
        assert run_id not in intruder.text


# --------------------------------------------------------------------------- ?api_key=


@pytest.mark.asyncio
async def test_api_key_query_parameter_only_on_get_streams(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(api_keys=KEYS)
    script(upstream, model, tokens=["x", "y"])
    async with client_for(gateway, KEY1) as one, client_for(gateway) as anonymous:
        run_id = (await chat(one, "hi"))["run_id"]

        stream = await read_sse(anonymous, "GET", f"/runs/{run_id}/stream?api_key={KEY1}")
        assert stream.status_code == 200
        assert stream.texts == ["x", "y", "[DONE]"]
        resumed = await read_sse(
            anonymous, "GET", f"/runs/{run_id}/stream?after=1&format=json&api_key={KEY1}"
        )
        assert [e.event for e in resumed.events] == ["delta", "done"]

        wrong = await anonymous.get(f"/runs/{run_id}/stream", params={"api_key": "nope"})
        assert_unauthorized(wrong)
        # Elsewhere the query parameter is not a credential.
        assert_unauthorized(await anonymous.get(f"/runs/{run_id}", params={"api_key": KEY1}))
        assert_unauthorized(await anonymous.get("/sessions", params={"api_key": KEY1}))
        assert_unauthorized(
            await anonymous.post("/chat/stream", params={"api_key": KEY1}, json={"message": "hi"})
        )


# --------------------------------------------------------------------------- CORS


@pytest.mark.asyncio
async def test_cors_allows_only_configured_origins(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(api_keys=KEYS, cors_origins=f"{ORIGIN}/, https://other.example")
    script(upstream, model, tokens=["hi"])
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with client_for(gateway) as client:
        allowed = await client.options("/chat/stream", headers={"Origin": ORIGIN, **preflight})
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        allowed_headers = allowed.headers["access-control-allow-headers"].lower()
        for header in ("authorization", "content-type", "last-event-id"):
            assert header in allowed_headers

        refused = await client.options(
            "/chat/stream", headers={"Origin": "https://evil.example", **preflight}
        )
        assert "access-control-allow-origin" not in refused.headers

        # A browser can read a 401, and the run and session ids of a real answer.
        denied = await client.get("/sessions", headers={"Origin": ORIGIN})
        assert_unauthorized(denied)
        assert denied.headers["access-control-allow-origin"] == ORIGIN
        answered = await read_sse(
            client,
            "POST",
            "/chat/stream",
            json_body={"message": "hi"},
            headers={"Origin": ORIGIN, "Authorization": f"Bearer {KEY1}"},
        )
        assert answered.status_code == 200
        assert answered.headers["access-control-allow-origin"] == ORIGIN
        exposed = answered.headers["access-control-expose-headers"].lower()
        assert "x-run-id" in exposed
        assert "x-session-id" in exposed
        assert "content-disposition" in exposed  # an export's file name

        # Renaming is a PATCH.
        rename = {"Access-Control-Request-Method": "PATCH"}
        renaming = await client.options("/sessions/s1", headers={"Origin": ORIGIN, **rename})
        assert renaming.status_code == 200, renaming.text
        assert "PATCH" in renaming.headers["access-control-allow-methods"]


@pytest.mark.asyncio
async def test_cors_is_off_by_default(gateway: GatewayServer) -> None:
    async with client_for(gateway) as client:
        preflight = await client.options(
            "/chat/stream",
            headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in preflight.headers
        health = await client.get("/healthz", headers={"Origin": ORIGIN})
        assert "access-control-allow-origin" not in health.headers


# --------------------------------------------------------------------------- anonymous mode


@pytest.mark.asyncio
async def test_without_keys_everyone_is_the_anonymous_principal(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=["free"])
    async with client_for(gateway) as plain, client_for(gateway, "anything") as keyed:
        session_id = (await chat(plain, "hi"))["session_id"]
        assert (await keyed.get(f"/sessions/{session_id}")).status_code == 200


# --------------------------------------------------------------------------- what is logged


@pytest.fixture
def captured_logs() -> Iterator[list[str]]:
    """Every line the process logs at INFO and above during the test."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO", format="{message}")
    yield lines
    logger.remove(sink)


@pytest.mark.asyncio
async def test_keys_and_messages_are_not_logged(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    model: str,
    captured_logs: list[str],
) -> None:
    gateway = make_gateway(api_keys=KEYS)
    script(upstream, model, tokens=["reply-text-9f3a"])
    async with client_for(gateway, KEY1) as one, client_for(gateway) as anonymous:
        run_id = (await chat(one, "message-text-5e21"))["run_id"]
        stream = await read_sse(anonymous, "GET", f"/runs/{run_id}/stream?api_key={KEY2}")
        assert stream.status_code == 404
        assert (await one.get("/sessions", headers={"Authorization": "Bearer bad"})).is_error
    logged = "".join(captured_logs)
    assert run_id in logged  # the sink did see the run
    for secret in (KEY1, KEY2, "message-text-5e21", "reply-text-9f3a"):
        assert secret not in logged


def test_access_log_lines_have_api_keys_redacted() -> None:
    line = f'127.0.0.1:5 - "GET /runs/r/stream?after=2&api_key={KEY1}&format=json HTTP/1.1" 200'
    assert KEY1 not in redact(line)
    assert "after=2&api_key=[redacted]&format=json" in redact(line)


# --------------------------------------------------------------------------- units


def test_keys_are_held_as_digests_and_name_principals() -> None:
    keys = ApiKeys.from_settings(settings(api_keys=f" {KEY1} ,,{KEY2},{KEY1}"))
    assert len(keys) == 2
    assert keys.enabled
    principal = keys.principal_for(KEY1)
    assert principal == "key_" + digest_of(KEY1).hex()[:16] == principal_of(digest_of(KEY1))
    assert keys.principal_for(KEY2) not in (None, principal)
    assert keys.principal_for("nope") is None
    assert KEY1 not in repr(keys)
    assert authenticate(keys, KEY1) == principal
    with pytest.raises(Unauthorized):
        authenticate(keys, None)
    with pytest.raises(Unauthorized):
        authenticate(keys, f"{KEY1} ")
    assert authenticate(ApiKeys([]), None) == ANONYMOUS
    assert authenticate(ApiKeys([]), "whatever") == ANONYMOUS


def test_settings_parse_lists_and_hide_keys() -> None:
    configured = settings(api_keys=KEYS, cors_origins=" https://a.example/ ,,https://b.example")
    assert configured.api_key_list == [KEY1, KEY2]
    assert configured.cors_origin_list == ["https://a.example", "https://b.example"]
    assert KEY1 not in repr(configured)
    assert settings().api_key_list == []
    assert settings().cors_origin_list == []
    assert settings().allow_unauthenticated is False


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_bind_check() -> None:
    bare = settings()
    on_loopback = check_bind("127.0.0.1", bare)
    assert on_loopback.allowed
    assert "no API keys: serving loopback only" in on_loopback.message

    refused = check_bind("0.0.0.0", bare)
    assert not refused.allowed
    assert "MARTLET_API_KEYS" in refused.message
    assert "MARTLET_ALLOW_UNAUTHENTICATED" in refused.message

    keyed = check_bind("0.0.0.0", settings(api_keys=KEY1))
    assert keyed.allowed
    assert keyed.message == ""

    allowed = check_bind("0.0.0.0", settings(allow_unauthenticated=True))
    assert allowed.allowed
    assert "without authentication" in allowed.message.lower()


# --------------------------------------------------------------------------- the real CLI


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bare_environment() -> dict[str, str]:
    """This process's environment without any gateway or upstream setting."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith(("MARTLET_", "OPENAI_"))
    }


def test_serve_refuses_a_public_address_without_keys(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            str(PYTHON),
            "-m",
            "martlet_molt",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        cwd=tmp_path,  # no .env here
        env=bare_environment(),
        capture_output=True,
        text=True,
        timeout=4.5,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output
    assert "Traceback" not in output
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, output
    assert "MARTLET_API_KEYS" in lines[0]
    assert "MARTLET_ALLOW_UNAUTHENTICATED" in lines[0]
    assert not (tmp_path / "martlet.db").exists()


@pytest.mark.asyncio
async def test_serve_on_loopback_without_keys_says_so(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        str(PYTHON),
        "-m",
        "martlet_molt",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        cwd=tmp_path,
        env=bare_environment(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                line = (await process.stderr.readline()).decode()
                assert line, "".join(seen)
                seen.append(line)
                if "no API keys: serving loopback only" in line:
                    break
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), TIMEOUT)
