"""Input limits over real HTTP: every request that breaks a limit gets a clear 4xx in the error
shape `{"error": {"code", "message", "details"}}`, and nothing is saved or sent upstream.

One gateway (uvicorn, SQLite) serves the whole module with small limits; every test checks
that the number of sessions, the upstream requests and an existing session's history are the
same after its bad requests as before.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from martlet_molt.config import Settings
from martlet_molt.testing import FakeUpstream, Script
from tests.gateway_server import GatewayServer
from tests.sse_client import SseStream, parse_lines, split_lines

pytestmark = pytest.mark.timeout(10)

MODEL = "input-limits-model"
MAX_MESSAGE_CHARS = 50
MAX_BODY_BYTES = 4096
EXISTING = "keep-me"
"""A session made before the bad requests; they name it, and it must not change."""

Json = dict[str, Any]

TLS = ssl.create_default_context()
"""Made once: every plain-HTTP client here would otherwise build its own (about 0.1 s)."""


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway with small limits and one finished session, `EXISTING`; yields its URL."""
    upstream.scripts_by_model[MODEL] = Script(tokens=["Hel", "lo"])
    database = tmp_path_factory.mktemp("limits") / "martlet.db"
    settings = Settings(
        _env_file=None,  # pyright: ignore[reportCallIssue]
        openai_base_url=upstream.base_url,
        openai_api_key="test-key",
        model=MODEL,
        database_url=f"sqlite:///{database}",
        max_message_chars=MAX_MESSAGE_CHARS,
        max_body_bytes=MAX_BODY_BYTES,
        sse_ping_seconds=0.2,
    )
    with GatewayServer(settings) as server:
        with httpx.Client(base_url=server.url, timeout=5, verify=TLS) as client:
            made = client.post("/chat", json={"message": "hello", "session_id": EXISTING})
            assert made.status_code == 200, made.text
            assert made.json()["status"] == "completed"
        yield server.url
    upstream.scripts_by_model.pop(MODEL, None)


@pytest_asyncio.fixture
async def client(gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway, timeout=5, verify=TLS) as client:
        yield client


async def snapshot(client: httpx.AsyncClient, upstream: FakeUpstream) -> tuple[int, Json, int]:
    """What must not change: the session count, the existing session, the upstream calls."""
    listing = await client.get("/sessions")
    assert listing.status_code == 200, listing.text
    existing = await client.get(f"/sessions/{EXISTING}")
    assert existing.status_code == 200, existing.text
    calls = sum(1 for r in upstream.records if r.model == MODEL)
    return listing.json()["total"], existing.json(), calls


@pytest_asyncio.fixture
async def unchanged(client: httpx.AsyncClient, upstream: FakeUpstream) -> AsyncIterator[None]:
    """Asserts, after the test, that its requests saved nothing and asked the upstream nothing."""
    before = await snapshot(client, upstream)
    yield
    assert await snapshot(client, upstream) == before


def refused(response: httpx.Response, status: int, code: str, says: str) -> Json:
    """Assert the error shape, status, code and a phrase of the message; returns the error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error: Json = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert says in error["message"], error
    assert isinstance(error["details"], dict)
    assert "\n" not in error["message"]
    return error


CHAT_PATHS = ["/chat", "/chat/stream"]

BAD_BODIES: list[tuple[str, Any, str]] = [
    ("too-long", {"message": "x" * (MAX_MESSAGE_CHARS + 1)}, f"the limit is {MAX_MESSAGE_CHARS}"),
    ("empty", {"message": ""}, "body field `message`: String should have at least 1 character"),
    ("blank", {"message": " \n\t "}, "body field `message`: message must not be blank"),
    ("missing", {"session_id": EXISTING}, "body field `message` is missing"),
    ("number", {"message": 5}, "body field `message`: Input should be a valid string"),
    ("list", {"message": ["hi"]}, "body field `message`: Input should be a valid string"),
    ("null", {"message": None}, "body field `message`: Input should be a valid string"),
    ("unknown-field", {"message": "hi", "colour": "red"}, "`colour` is not a known field"),
    ("not-an-object", ["hi"], "the body must be a JSON object"),
    ("string-body", "hi", "the body must be a JSON object"),
    ("bad-request-id", {"message": "hi", "client_request_id": "a b"}, "`client_request_id`"),
    ("several", {"message": 1, "x": 2}, "`message`: Input should be a valid string; body field"),
]

BAD_SESSION_IDS = [
    "a/b",
    "..",
    "../other",
    "%2F",
    "a%2Fb",
    "with space",
    " lead",
    "trail\n",
    "x' OR 1=1 --",
    "x'; DROP TABLE sessions; --",
    "sessão",
    "日本",
    "-starts-with-dash",
    ".hidden",
    "a" * 129,
    "",
]


@pytest.mark.asyncio
@pytest.mark.parametrize("path", CHAT_PATHS)
@pytest.mark.parametrize(
    ("body", "says"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES]
)
@pytest.mark.usefixtures("unchanged")
async def test_bad_chat_body_is_422_and_saves_nothing(
    client: httpx.AsyncClient, path: str, body: Any, says: str
) -> None:
    if isinstance(body, dict) and "session_id" not in body:
        body = {**body, "session_id": EXISTING}
    refused(await client.post(path, json=body), 422, "invalid_request", says)


@pytest.mark.asyncio
@pytest.mark.parametrize("path", CHAT_PATHS)
@pytest.mark.parametrize("session_id", BAD_SESSION_IDS)
@pytest.mark.usefixtures("unchanged")
async def test_session_id_outside_the_pattern_is_422(
    client: httpx.AsyncClient, path: str, session_id: str
) -> None:
    response = await client.post(path, json={"message": "hi", "session_id": session_id})
    error = refused(response, 422, "invalid_request", "body field `session_id`: String should")
    assert error["details"]["errors"][0]["loc"] == ["body", "session_id"]


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize(
    "session_id",
    ["with space", "x' OR 1=1 --", "x'; DROP TABLE sessions; --", "sessão", "a" * 129, "%2E%2E"],
)
@pytest.mark.usefixtures("unchanged")
async def test_session_path_outside_the_pattern_is_422(
    client: httpx.AsyncClient, method: str, session_id: str
) -> None:
    response = await client.request(method, f"/sessions/{session_id}")
    refused(response, 422, "invalid_request", "path parameter `session_id`: String should")


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("tail", [f"{EXISTING}%2F..", f"{EXISTING}/x", "a%2Fb"])
@pytest.mark.usefixtures("unchanged")
async def test_session_path_with_a_slash_names_no_endpoint(
    client: httpx.AsyncClient, method: str, tail: str
) -> None:
    response = await client.request(method, f"/sessions/{tail}")
    refused(response, 404, "not_found", "no such endpoint")


async def raw_request(url: str, request_line: str) -> tuple[int, Json]:
    """Send one request line as is (clients normalise `..` away), return status and JSON."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"{request_line}\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    response = httpx.Response(int(head.split()[1]), content=body)
    return response.status_code, response.json()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("target", "status"),
    [("/sessions/..", 422), ("/sessions/../sessions", 404), (f"/sessions/{EXISTING}/..", 404)],
)
@pytest.mark.usefixtures("unchanged")
async def test_dot_segments_have_no_path_meaning(gateway: str, target: str, status: int) -> None:
    for method in ("GET", "DELETE"):
        code, body = await raw_request(gateway, f"{method} {target} HTTP/1.1")
        assert code == status, body
        assert set(body["error"]) == {"code", "message", "details"}


def json_bytes(size: int) -> bytes:
    """A valid chat body of exactly `size` bytes (padded with JSON whitespace)."""
    start, end = b'{"message": "hi", "session_id": "' + EXISTING.encode() + b'"', b"}"
    return start + b" " * (size - len(start) - len(end)) + end


async def chunks_of(data: bytes, size: int = 512) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


JSON_HEADERS = {"content-type": "application/json"}


@pytest.mark.asyncio
@pytest.mark.parametrize("path", CHAT_PATHS)
@pytest.mark.usefixtures("unchanged")
async def test_body_over_the_limit_with_content_length_is_413(
    client: httpx.AsyncClient, path: str
) -> None:
    body = json_bytes(MAX_BODY_BYTES + 1)
    response = await client.post(path, content=body, headers=JSON_HEADERS)
    assert response.request.headers["content-length"] == str(MAX_BODY_BYTES + 1)
    error = refused(response, 413, "body_too_large", f"the limit is {MAX_BODY_BYTES} bytes")
    assert error["details"] == {
        "max_body_bytes": MAX_BODY_BYTES,
        "content_length": MAX_BODY_BYTES + 1,
    }
    assert response.headers["connection"] == "close"


@pytest.mark.asyncio
@pytest.mark.parametrize("path", CHAT_PATHS)
@pytest.mark.usefixtures("unchanged")
async def test_chunked_body_over_the_limit_is_413(client: httpx.AsyncClient, path: str) -> None:
    body = json_bytes(MAX_BODY_BYTES + 1)
    response = await client.post(path, content=chunks_of(body), headers=JSON_HEADERS)
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.request.headers
    error = refused(response, 413, "body_too_large", f"limit of {MAX_BODY_BYTES} bytes")
    assert error["details"] == {"max_body_bytes": MAX_BODY_BYTES}


@pytest.mark.asyncio
async def test_bodies_up_to_the_limit_are_served_chunked_or_not(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    before_total, before_session, before_calls = await snapshot(client, upstream)
    body = json_bytes(MAX_BODY_BYTES)
    whole = await client.post("/chat", content=body, headers=JSON_HEADERS)
    assert whole.status_code == 200, whole.text
    assert whole.json()["reply"] == "Hello"
    # A chunked body is read before the app runs, then replayed to it; the stream still works.
    stream = SseStream()
    request = client.build_request(
        "POST", "/chat/stream", content=chunks_of(body), headers=JSON_HEADERS
    )
    assert request.headers["transfer-encoding"] == "chunked"
    response = await client.send(request, stream=True)
    try:
        assert response.status_code == 200
        async for _ in parse_lines(split_lines(response.aiter_text()), stream):
            pass
    finally:
        await response.aclose()
    assert stream.texts == ["Hel", "lo", "[DONE]"]
    total, session, calls = await snapshot(client, upstream)
    assert (total, calls) == (before_total, before_calls + 2)
    assert len(session["messages"]) == len(before_session["messages"]) + 4


BAD_BYTES: list[tuple[str, bytes, str]] = [
    ("invalid-utf8", b'{"message": "\xff\xfe"}', "the body is not valid UTF-8: byte 0xff"),
    ("latin-1", '{"message": "café"}'.encode("latin-1"), "not valid UTF-8: byte 0xe9"),
    ("not-json", b"message=hi", "the body is not valid JSON"),
    ("truncated-json", b'{"message": "hi"', "the body is not valid JSON"),
    ("lone-surrogate", b'{"message": "a\\ud800b"}', "body field `message` is not valid Unicode"),
    ("surrogate-key", b'{"message": "hi", "\\udfff": 1}', "is not valid Unicode text"),
    ("empty-body", b"", "the body is missing: send a JSON object"),
    ("null-body", b"null", "the body must be a JSON object"),
    ("deeply-nested", b"[" * 2000 + b"]" * 2000, "it is nested too deeply"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("path", CHAT_PATHS)
@pytest.mark.parametrize(
    ("content", "says"), [c[1:] for c in BAD_BYTES], ids=[c[0] for c in BAD_BYTES]
)
@pytest.mark.usefixtures("unchanged")
async def test_body_that_is_not_json_text_is_422(
    client: httpx.AsyncClient, path: str, content: bytes, says: str
) -> None:
    response = await client.post(path, content=content, headers=JSON_HEADERS)
    refused(response, 422, "invalid_request", says)


@pytest.mark.asyncio
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
@pytest.mark.usefixtures("unchanged")
async def test_json_sent_as_another_content_type_is_422_saying_so(
    client: httpx.AsyncClient, content_type: str
) -> None:
    response = await client.post(
        "/chat", content=b'{"message": "hi"}', headers={"content-type": content_type}
    )
    refused(response, 422, "invalid_request", f"(this one is `{content_type}`)")


@pytest.mark.asyncio
@pytest.mark.usefixtures("unchanged")
async def test_unknown_format_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/chat/stream", params={"format": "xml"}, json={"message": "hi", "session_id": EXISTING}
    )
    refused(response, 422, "invalid_request", "query parameter `format`: Input should be 'text'")
    run_id = await existing_run_id(client)
    response = await client.get(f"/runs/{run_id}/stream", params={"format": "xml"})
    refused(response, 422, "invalid_request", "query parameter `format`")


async def existing_run_id(client: httpx.AsyncClient) -> str:
    session = (await client.get(f"/sessions/{EXISTING}")).json()
    run_id: str = session["messages"][-1]["run_id"]
    return run_id


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("headers", "params", "says"),
    [
        ({"last-event-id": "abc"}, {}, "Last-Event-ID must be a non-negative integer"),
        ({"last-event-id": "-1"}, {}, "Last-Event-ID must be a non-negative integer"),
        ({"last-event-id": "1.5"}, {}, "Last-Event-ID must be a non-negative integer"),
        ({"last-event-id": "9" * 40}, {}, "Last-Event-ID must be a non-negative integer"),
        ({"last-event-id": "999"}, {}, "cannot resume after event 999"),
        ({}, {"after": "999"}, "cannot resume after event 999"),
        ({}, {"after": "-1"}, "query parameter `after`: Input should be greater than or equal"),
        ({}, {"after": "abc"}, "query parameter `after`: Input should be a valid integer"),
    ],
    ids=[
        "abc",
        "negative",
        "fraction",
        "huge",
        "past-the-end",
        "after-past-the-end",
        "after-negative",
        "after-abc",
    ],
)
@pytest.mark.usefixtures("unchanged")
async def test_bad_resume_point_is_422(
    client: httpx.AsyncClient, headers: dict[str, str], params: dict[str, str], says: str
) -> None:
    run_id = await existing_run_id(client)
    response = await client.get(f"/runs/{run_id}/stream", headers=headers, params=params)
    error = refused(response, 422, "invalid_request", says)
    if "past" in says or "cannot resume" in says:
        assert error["details"]["last_seq"] >= 1


@pytest.mark.asyncio
@pytest.mark.usefixtures("unchanged")
async def test_validation_details_list_every_error_and_echo_only_small_inputs(
    client: httpx.AsyncClient,
) -> None:
    big = "y" * 1000
    response = await client.post(
        "/chat", json={"message": 7, "session_id": big, "a": 1, "b": 2, "c": 3}
    )
    error = refused(response, 422, "invalid_request", "body field `message`")
    assert error["message"].endswith("; and 2 more")
    errors = error["details"]["errors"]
    assert len(errors) == 5
    by_field = {tuple(e["loc"]): e for e in errors}
    assert by_field[("body", "message")]["input"] == 7
    assert "input" not in by_field[("body", "session_id")]  # too big to echo
    assert by_field[("body", "session_id")]["type"] == "string_pattern_mismatch"


@pytest.mark.asyncio
@pytest.mark.usefixtures("unchanged")
async def test_unknown_endpoint_and_method_use_the_error_shape(client: httpx.AsyncClient) -> None:
    refused(await client.get("/nope"), 404, "not_found", "no such endpoint: GET /nope")
    response = await client.put(f"/sessions/{EXISTING}")
    refused(response, 405, "method_not_allowed", f"PUT is not allowed on /sessions/{EXISTING}")
    assert "allow" in response.headers


@pytest.mark.asyncio
async def test_existing_session_survives_every_bad_request(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    """One session, named by a burst of bad requests of every kind at once: still intact."""
    before = await snapshot(client, upstream)
    run_id = await existing_run_id(client)
    body = {"session_id": EXISTING}
    requests = [
        client.post("/chat", json={**body, "message": ""}),
        client.post("/chat", json={**body, "message": "x" * 500}),
        client.post("/chat", json={**body, "message": "hi", "role": "system"}),
        client.post("/chat/stream", params={"format": "xml"}, json={**body, "message": "hi"}),
        client.post("/chat", content=json_bytes(MAX_BODY_BYTES * 2), headers=JSON_HEADERS),
        client.post("/chat", content=b'{"session_id": "keep-me", "message": "\xff"}'),
        client.get(f"/runs/{run_id}/stream", headers={"last-event-id": "abc"}),
        client.get(f"/runs/{run_id}/stream", params={"after": 10_000}),
        client.delete(f"/sessions/{EXISTING}' OR 1=1 --"),
        client.delete(f"/sessions/{EXISTING}%2F.."),
        client.delete(f"/sessions/{EXISTING}/messages"),
    ]
    responses = await asyncio.gather(*requests)
    assert [r.status_code for r in responses] == [422] * 4 + [413] + [422] * 4 + [404] * 2
    for response in responses:
        assert set(response.json()["error"]) == {"code", "message", "details"}
    assert await snapshot(client, upstream) == before
    run = (await client.get(f"/runs/{run_id}")).json()
    assert (run["status"], run["content"]) == ("completed", "Hello")


def test_settings_read_max_body_bytes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings(_env_file=None).max_body_bytes == 1_048_576  # pyright: ignore[reportCallIssue]
    monkeypatch.setenv("MARTLET_MAX_BODY_BYTES", "2048")
    assert Settings(_env_file=None).max_body_bytes == 2048  # pyright: ignore[reportCallIssue]
