"""`martlet-molt sessions` against a real gateway and the fake upstream (the CLI in this
process): titles in the list, search, show, rename and export, and the gateway's own words
when it refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from martlet_molt.cli import cli
from martlet_molt.testing import FakeUpstream
from tests.conftest import GatewayFactory, script
from tests.gateway_server import GatewayServer

pytestmark = pytest.mark.timeout(20)


def invoke(gateway: GatewayServer, *args: str) -> Any:
    """The CLI in this process, pointed at the gateway."""
    return CliRunner().invoke(cli, list(args), env={"MARTLET_URL": gateway.url})


@pytest.fixture
def chats(make_gateway: GatewayFactory, upstream: FakeUpstream, model: str) -> GatewayServer:
    """A gateway holding two chats: `trip` (older) and `sse`."""
    gateway = make_gateway()
    with httpx.Client(base_url=gateway.url, timeout=5) as client:
        script(upstream, model, tokens=["Ride the trams ", "to the castle."])
        first = client.post(
            "/chat", json={"message": "Plan a trip to Lisbon", "session_id": "trip"}
        )
        assert first.status_code == 200, first.text
        script(upstream, model, tokens=["Events flow one way."])
        second = client.post("/chat", json={"message": "Explain SSE", "session_id": "sse"})
        assert second.status_code == 200, second.text
    return gateway


def test_the_list_and_a_history_show_titles(chats: GatewayServer) -> None:
    listing = invoke(chats, "sessions")
    assert listing.exit_code == 0, listing.output
    assert "2 session(s)" in listing.stdout
    assert "Plan a trip to Lisbon" in listing.stdout
    assert "Explain SSE" in listing.stdout

    page = json.loads(invoke(chats, "sessions", "list", "--limit", "1", "--json").stdout)
    assert [(s["session_id"], s["title"]) for s in page["sessions"]] == [("sse", "Explain SSE")]
    same = json.loads(invoke(chats, "sessions", "--limit", "1", "--json").stdout)
    assert same["sessions"] == page["sessions"]

    for args in (("sessions", "trip"), ("sessions", "show", "trip")):
        history = invoke(chats, *args)
        assert history.exit_code == 0, history.output
        assert history.stdout.startswith("session trip · Plan a trip to Lisbon\n")
        assert "Ride the trams to the castle." in history.stdout


def test_rename_and_its_refusals(chats: GatewayServer) -> None:
    renamed = invoke(chats, "sessions", "rename", "trip", "  Lisbon, May  ")
    assert renamed.exit_code == 0, renamed.output
    assert renamed.stdout == "trip: Lisbon, May\n"
    page = json.loads(invoke(chats, "sessions", "--json").stdout)
    assert [(s["session_id"], s["title"]) for s in page["sessions"]] == [
        ("sse", "Explain SSE"),
        ("trip", "Lisbon, May"),
    ]

    blank = invoke(chats, "sessions", "rename", "trip", "   ")
    assert blank.exit_code == 2
    assert "title must not be blank" in blank.stderr
    missing = invoke(chats, "sessions", "rename", "nope", "x")
    assert missing.exit_code == 2
    assert "session nope not found" in missing.stderr
    assert "Traceback" not in missing.output


def test_search_shows_the_matching_passage(chats: GatewayServer) -> None:
    found = invoke(chats, "sessions", "search", "castle", "tram")
    assert found.exit_code == 0, found.output
    assert "1 found" in found.stdout
    assert "trip" in found.stdout
    assert "Ride the trams to the castle." in found.stdout
    page = json.loads(invoke(chats, "sessions", "search", "events", "--json").stdout)
    assert [(h["session_id"], h["snippet"]) for h in page["sessions"]] == [
        ("sse", "Events flow one way.")
    ]
    nothing = json.loads(invoke(chats, "sessions", "search", '"*', "--json").stdout)
    assert (nothing["sessions"], nothing["total"]) == ([], 0)


def test_export_to_stdout_a_file_or_a_folder(chats: GatewayServer, tmp_path: Path) -> None:
    with httpx.Client(base_url=chats.url, timeout=5) as client:
        served = client.get("/sessions/trip/export").text

    def without_time(markdown: str) -> list[str]:
        return [line for line in markdown.splitlines() if not line.startswith("- Exported:")]

    printed = invoke(chats, "sessions", "export", "trip")
    assert printed.exit_code == 0, printed.output
    assert printed.stdout.startswith("# Plan a trip to Lisbon\n")
    assert without_time(printed.stdout) == without_time(served)

    target = tmp_path / "trip.json"
    written = invoke(chats, "sessions", "export", "trip", "--format", "json", "-o", str(target))
    assert written.exit_code == 0, written.output
    assert written.stdout == ""
    assert f"wrote {target}" in written.stderr
    body = json.loads(target.read_text())
    assert body["session"]["title"] == "Plan a trip to Lisbon"
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"]

    into = invoke(chats, "sessions", "export", "sse", "-o", str(tmp_path))
    assert into.exit_code == 0, into.output
    assert (tmp_path / "Explain-SSE.md").read_text().startswith("# Explain SSE\n")

    missing = invoke(chats, "sessions", "export", "nope")
    assert missing.exit_code == 2
    assert "session nope not found" in missing.stderr
