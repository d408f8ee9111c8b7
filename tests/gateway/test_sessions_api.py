"""Chats that follow the user, over HTTP against a real gateway (uvicorn, SQLite) and the fake
upstream: titles saved on the server, renaming (`PATCH /sessions/{id}`), search
(`GET /sessions?q=`) and export (`GET /sessions/{id}/export`), each scoped to its principal."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from martlet_molt.testing import FakeUpstream, Script
from tests.conftest import GatewayFactory, script
from tests.gateway_server import GatewayServer

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

Json = dict[str, Any]
K1, K2 = "key-one", "key-two"


def client_for(gateway: GatewayServer, key: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=5.0)


async def chat(client: httpx.AsyncClient, message: str, session_id: str | None = None) -> Json:
    body: Json = {"message": message}
    if session_id is not None:
        body["session_id"] = session_id
    response = await client.post("/chat", json=body)
    assert response.status_code == 200, response.text
    answer: Json = response.json()
    assert answer["status"] == "completed", answer
    return answer


def error_of(response: httpx.Response) -> Json:
    body: Json = response.json()
    assert set(body) == {"error"}, body
    error: Json = body["error"]
    return error


async def titles(client: httpx.AsyncClient) -> list[tuple[str, str | None]]:
    page = (await client.get("/sessions")).json()
    return [(s["session_id"], s["title"]) for s in page["sessions"]]


def disposition_filename(response: httpx.Response) -> str:
    """The UTF-8 file name of a `Content-Disposition: attachment` answer."""
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=")
    return unquote(disposition.split("filename*=UTF-8''", 1)[1])


# ---------------------------------------------------------------- titles and renaming


async def test_titles_are_saved_on_the_server_and_renamed(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=["Sure."])
    async with client_for(gateway) as client:
        await chat(client, "  Plan a trip\n\nto   Lisbon in May  ", "trip")
        await chat(client, "x" * 30 + " " + "y" * 40, "long")
        await chat(client, "a follow-up does not change the title", "trip")
        assert await titles(client) == [
            ("trip", "Plan a trip to Lisbon in May"),
            ("long", "x" * 30 + "…"),
        ]
        detail = (await client.get("/sessions/trip")).json()
        assert detail["title"] == "Plan a trip to Lisbon in May"

        renamed = await client.patch("/sessions/long", json={"title": "  Letters 🚋 «x»  "})
        assert renamed.status_code == 200, renamed.text
        assert renamed.json() == {
            "session_id": "long",
            "title": "Letters 🚋 «x»",
            "created_at": renamed.json()["created_at"],
            "updated_at": renamed.json()["updated_at"],
            "active_run_id": None,
        }
        # Every client sees it; the list keeps its order (renaming is not activity).
        assert await titles(client) == [
            ("trip", "Plan a trip to Lisbon in May"),
            ("long", "Letters 🚋 «x»"),
        ]
        assert (await client.get("/sessions/long")).json()["title"] == "Letters 🚋 «x»"
        assert (await client.patch("/sessions/long", json={"title": "t" * 200})).status_code == 200


async def test_chats_through_openai_s_api_are_titled_too(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=["Hello."])
    async with client_for(gateway) as client:
        messages = [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name three rivers"},
        ]
        completion = await client.post(
            "/v1/chat/completions", json={"model": model, "messages": messages}
        )
        assert completion.status_code == 200, completion.text
        session_id = completion.headers["x-session-id"]
        response = await client.post("/v1/responses", json={"model": model, "input": "Hi there"})
        assert response.status_code == 200, response.text
        listed = dict(await titles(client))
        assert listed[session_id] == "Name three rivers"
        assert "Hi there" in listed.values()
        found = (await client.get("/sessions", params={"q": "rivers"})).json()
        assert [h["session_id"] for h in found["sessions"]] == [session_id]
        assert (await client.get("/sessions", params={"q": "terse"})).json()["total"] == 0


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"title": ""}, "title must not be blank"),
        ({"title": " \t "}, "title must not be blank"),
        ({"title": "t" * 201}, "at most 200 characters"),
        ({"title": "two\nlines"}, "one line"),
        ({"title": "nul\x00"}, "one line"),
        ({"title": 5}, "valid string"),
        ({}, "body field `title` is missing"),
        ({"title": "ok", "color": "red"}, "`color` is not a known field"),
    ],
)
async def test_a_bad_title_is_refused_and_changes_nothing(
    gateway: GatewayServer, upstream: FakeUpstream, model: str, body: Json, says: str
) -> None:
    script(upstream, model, tokens=["Sure."])
    async with client_for(gateway) as client:
        await chat(client, "keep this title", "s1")
        refused = await client.patch("/sessions/s1", json=body)
        assert refused.status_code == 422, refused.text
        error = error_of(refused)
        assert error["code"] == "invalid_request"
        assert says in error["message"]
        assert await titles(client) == [("s1", "keep this title")]
        not_json = await client.patch(
            "/sessions/s1", content=b"{", headers={"Content-Type": "application/json"}
        )
        assert not_json.status_code == 422


async def test_unknown_and_other_principals_sessions_are_not_found(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=["A harbour answer."])
    gateway = make_gateway(api_keys=f"{K1},{K2}")
    async with client_for(gateway, K1) as mine, client_for(gateway, K2) as theirs:
        await chat(mine, "Harbour cranes at dusk", "mine")
        for client, path in (
            (theirs, "/sessions/mine"),
            (mine, "/sessions/nope"),
        ):
            renamed = await client.patch(path, json={"title": "taken"})
            assert renamed.status_code == 404, renamed.text
            assert error_of(renamed)["code"] == "session_not_found"
            for fmt in ("markdown", "json"):
                exported = await client.get(f"{path}/export", params={"format": fmt})
                assert exported.status_code == 404, exported.text
                assert error_of(exported)["code"] == "session_not_found"
        assert (await theirs.get("/sessions", params={"q": "harbour"})).json()["sessions"] == []
        assert await titles(mine) == [("mine", "Harbour cranes at dusk")]
        bad_id = await mine.patch("/sessions/..bad", json={"title": "x"})
        assert bad_id.status_code == 422
        async with client_for(gateway) as anonymous:
            assert (await anonymous.patch("/sessions/mine", json={"title": "x"})).status_code == 401
            assert (await anonymous.get("/sessions/mine/export")).status_code == 401


# ---------------------------------------------------------------- search


async def test_search_finds_old_chats_by_their_words(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    async with client_for(gateway) as client:
        script(upstream, model, tokens=["Ride the old ", "trams to the castle."])
        await chat(client, "Plan a trip to Lisbon", "trip")
        script(upstream, model, tokens=["Events flow to the browser."])
        await chat(client, "Explain server-sent events", "sse")
        await client.patch("/sessions/sse", json={"title": "Streaming notes"})

        found = await client.get("/sessions", params={"q": "CASTLE tram"})
        assert found.status_code == 200, found.text
        page = found.json()
        assert (page["query"], page["total"], page["limit"], page["offset"]) == (
            "CASTLE tram",
            1,
            50,
            0,
        )
        [hit] = page["sessions"]
        assert (hit["session_id"], hit["title"], hit["matched"]) == (
            "trip",
            "Plan a trip to Lisbon",
            "message",
        )
        assert hit["snippet"] == "Ride the old trams to the castle."
        assert [hit["snippet"][a:b] for a, b in hit["highlights"]] == ["trams", "castle"]
        assert hit["active_run_id"] is None

        by_title = (await client.get("/sessions", params={"q": "stream"})).json()
        assert [(h["session_id"], h["matched"]) for h in by_title["sessions"]] == [("sse", "title")]
        # Both: the limit and offset page the hits, and the total counts them all.
        both = (await client.get("/sessions", params={"q": "the", "limit": 1})).json()
        assert both["total"] == 2
        assert len(both["sessions"]) == 1
        rest = (await client.get("/sessions", params={"q": "the", "offset": 1})).json()
        assert {both["sessions"][0]["session_id"], rest["sessions"][0]["session_id"]} == {
            "trip",
            "sse",
        }
        # A blank query is the plain list; a long one is refused.
        plain = (await client.get("/sessions", params={"q": "  "})).json()
        assert "query" not in plain
        assert plain["total"] == 2
        too_long = await client.get("/sessions", params={"q": "x" * 501})
        assert too_long.status_code == 422
        assert "q" in error_of(too_long)["message"]


@pytest.mark.parametrize(
    ("query", "finds"),
    [
        ('"', False),
        ('"castle', True),
        ("*", False),
        ("castle*", True),
        ("NEAR(castle, 2)", False),
        ("castle AND OR NOT", False),
        ("title:castle", False),
        ("castle & !x | (y)", False),
        ("castle:*", True),
        ("\\", False),
        ("' OR 1=1 --", False),
        ("-castle +port", True),
        ("%", False),
        ("_", False),
        ("🚋", False),
        ("\x00castle", True),
    ],
)
async def test_any_search_text_answers_200(
    gateway: GatewayServer, upstream: FakeUpstream, model: str, query: str, finds: bool
) -> None:
    script(upstream, model, tokens=["The castle."])
    async with client_for(gateway) as client:
        await chat(client, "Castles in Portugal", "castles")
        found = await client.get("/sessions", params={"q": query})
        assert found.status_code == 200, found.text
        ids = [h["session_id"] for h in found.json()["sessions"]]
        assert ids == (["castles"] if finds else []), ids


# ---------------------------------------------------------------- export


async def test_export_as_markdown_and_json_with_tool_calls(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(tools="calculator")
    upstream.scripts_by_model.pop(model, None)  # the queue below serves this test
    calls = Script(
        tool_calls=[
            {"name": "calculator", "arguments": {"expression": "6*7"}, "id": "call_good"},
            {"name": "calculator", "arguments": {"expression": "1/0"}, "id": "call_bad"},
        ]
    )
    upstream.enqueue(calls, Script(tokens=["It is ", "42."]))
    async with client_for(gateway) as client:
        await chat(client, "What is 6*7?\nShow ```code``` too", "maths")
        await client.patch("/sessions/maths", json={"title": "Sums / «Überblick»: 6×7"})

        markdown = await client.get("/sessions/maths/export")
        assert markdown.status_code == 200, markdown.text
        assert markdown.headers["content-type"] == "text/markdown; charset=utf-8"
        assert 'filename="Sums-Uberblick-6-7.md"' in markdown.headers["content-disposition"]
        assert disposition_filename(markdown) == "Sums-Überblick-6-7.md"
        text = markdown.text
        assert text.startswith("# Sums / «Überblick»: 6×7\n\n- Session: `maths`\n")
        sections = text.split("\n## ")[1:]
        assert [s.split(" · ")[0] for s in sections] == [
            "User",
            "Assistant",
            "Tool result",
            "Tool result",
            "Assistant",
        ]
        assert "What is 6*7?\nShow ```code``` too" in sections[0]
        assert "**Tool call** `calculator` · `call_good`" in sections[1]
        assert '```json\n{\n  "expression": "6*7"\n}\n```' in sections[1]
        assert sections[2].startswith("Tool result · calculator · done · ")
        assert "```text\n42\n```" in sections[2]
        assert sections[3].startswith("Tool result · calculator · failed · ")
        assert "error: division by zero" in sections[3]
        assert sections[4].endswith("It is 42.\n")

        exported = await client.get("/sessions/maths/export", params={"format": "json"})
        assert exported.status_code == 200, exported.text
        assert exported.headers["content-type"] == "application/json"
        assert disposition_filename(exported) == "Sums-Überblick-6-7.json"
        body = json.loads(exported.text)
        detail = (await client.get("/sessions/maths")).json()
        assert (body["format"], body["version"]) == ("martlet_molt.session", 1)
        assert body["session"] == {k: v for k, v in detail.items() if k != "messages"}
        assert body["messages"] == detail["messages"]
        roles = [(m["role"], m["status"], m["tool_status"]) for m in body["messages"]]
        assert roles == [
            ("user", "completed", None),
            ("assistant", "completed", None),
            ("tool", "completed", "done"),
            ("tool", "completed", "failed"),
            ("assistant", "completed", None),
        ]
        assert [c["id"] for c in body["messages"][1]["tool_calls"]] == ["call_good", "call_bad"]
        assert all(m["created_at"] for m in body["messages"])
        assert all(isinstance(m["duration_ms"], int) for m in body["messages"][2:4])

        refused = await client.get("/sessions/maths/export", params={"format": "xml"})
        assert refused.status_code == 422
        assert error_of(refused)["code"] == "invalid_request"


async def test_an_untitled_session_exports_under_its_id(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=["ok"])
    async with client_for(gateway) as client:
        await chat(client, "???", "no-words.1")
        await client.patch("/sessions/no-words.1", json={"title": "*** / ***"})
        exported = await client.get("/sessions/no-words.1/export")
        assert exported.status_code == 200
        assert 'filename="no-words.1.md"' in exported.headers["content-disposition"]
        assert exported.text.startswith("# *** / ***\n")
