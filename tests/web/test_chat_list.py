"""Chats that follow the user, in a real browser (Debian's Chromium via Playwright) against a
real gateway: titles come from the server (a second browser with empty storage shows them),
renaming, the search box, and the Download button's files."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from martlet_molt.testing import FakeUpstream
from tests.conftest import GatewayFactory, script
from tests.gateway_server import GatewayServer
from tests.web.conftest import IN_CI
from tests.web.test_chat_page import api, expect_final, send, session_of

try:
    from playwright.sync_api import Browser, BrowserContext, Page, expect
except ImportError:
    if IN_CI:
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)

pytestmark = pytest.mark.timeout(30)


def chat_over_api(gateway: GatewayServer, message: str, key: str | None = None) -> str:
    """A finished chat made without the page; its session id."""
    with api(gateway, key) as client:
        answer = client.post("/chat", json={"message": message})
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "completed"
        session_id: str = answer.json()["session_id"]
        return session_id


def listed(page: Page) -> list[str]:
    """The titles the chat list shows, in order."""
    return page.locator(".session-open .session-title").all_text_contents()


def fresh_page(browser: Browser, gateway: GatewayServer) -> tuple[BrowserContext, Page]:
    """Another browser profile: nothing in its storage."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.goto(gateway.url + "/")
    return context, page


def test_titles_come_from_the_server_in_another_browser(
    browser: Browser, page: Page, gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=["Take ", "tram 28."])
    page.goto(gateway.url + "/")
    send(page, "Plan a trip\nto Lisbon in May")
    expect_final(page, "completed")
    first = session_of(page)
    expect(page.locator("#chat-title")).to_have_text("Plan a trip to Lisbon in May")
    from_api = chat_over_api(gateway, "Explain server-sent events")

    other, second = fresh_page(browser, gateway)
    try:
        assert second.evaluate("() => window.localStorage.length") == 0
        expect(second.locator(".session-open .session-title")).to_have_text(
            ["Explain server-sent events", "Plan a trip to Lisbon in May"]
        )
        second.locator(".session-open", has_text="Plan a trip").click()
        expect(second.locator("#chat-title")).to_have_text("Plan a trip to Lisbon in May")
        expect(second).to_have_title("Plan a trip to Lisbon in May · martlet_molt")
        assert session_of(second) == first
        # Titles are no longer kept in the browser.
        storage = second.evaluate("() => Object.keys(window.localStorage)")
        assert "martlet.titles" not in storage
        second.goto(f"{gateway.url}/#session={from_api}")
        expect(second.locator("#chat-title")).to_have_text("Explain server-sent events")
    finally:
        other.close()


def test_rename_is_saved_on_the_server(
    browser: Browser, page: Page, gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=["Noted."])
    older = chat_over_api(gateway, "An older chat")
    page.goto(gateway.url + "/")
    send(page, "Ideas for a birthday")
    expect_final(page, "completed")
    session_id = session_of(page)

    page.get_by_role("button", name="Rename").click()
    title = page.get_by_label("Chat title")
    expect(title).to_be_focused()
    expect(title).to_have_value("Ideas for a birthday")
    title.fill("Escape leaves it")
    title.press("Escape")
    expect(page.locator("#chat-title")).to_have_text("Ideas for a birthday")
    expect(page.get_by_role("button", name="Rename")).to_be_focused()

    page.get_by_role("button", name="Rename").click()
    title.fill("   ")
    title.press("Enter")
    expect(page.get_by_role("status")).to_have_text("A title cannot be blank.")
    title.fill("  Party for Ana 🎂  ")
    title.press("Enter")
    expect(page.locator("#chat-title")).to_have_text("Party for Ana 🎂")
    expect(page).to_have_title("Party for Ana 🎂 · martlet_molt")
    expect(page.locator(".session-open[aria-current=page]")).to_contain_text("Party for Ana 🎂")
    expect(page.locator(".session-open .session-title")).to_have_text(
        ["Party for Ana 🎂", "An older chat"]  # renaming keeps the order
    )
    with api(gateway) as client:
        assert client.get(f"/sessions/{session_id}").json()["title"] == "Party for Ana 🎂"
        assert client.get(f"/sessions/{older}").json()["title"] == "An older chat"

    other, second = fresh_page(browser, gateway)
    try:
        expect(second.locator(".session-open .session-title").first).to_have_text(
            "Party for Ana 🎂"
        )
    finally:
        other.close()


def test_the_search_box_finds_an_old_chat_by_a_word_in_it(
    page: Page, gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=["Sourdough needs a starter ", "and patience."])
    baking = chat_over_api(gateway, "How do I bake bread?")
    script(upstream, model, tokens=["Water it weekly."])
    chat_over_api(gateway, "Caring for a fern")
    chat_over_api(gateway, "Repotting a cactus")
    page.goto(gateway.url + "/")
    expect(page.locator(".session-open")).to_have_count(3)

    search = page.get_by_role("searchbox", name="Search chats")
    search.fill("sourd")  # a word of the answer, as its beginning
    expect(page.locator(".session-open")).to_have_count(1)
    expect(page.locator("#search-summary")).to_have_text("1 chat found")
    hit = page.locator(".session-open").first
    expect(hit.locator(".session-title")).to_have_text("How do I bake bread?")
    expect(hit.locator(".session-snippet")).to_have_text("Sourdough needs a starter and patience.")
    expect(hit.locator("mark")).to_have_text(["Sourdough"])
    hit.click()
    expect(page.locator("article.msg.user")).to_have_text("YouHow do I bake bread?")
    assert session_of(page) == baking

    search.fill("water FERN")  # words of the question and of the answer
    expect(page.locator(".session-open .session-title")).to_have_text(["Caring for a fern"])
    search.fill('"* ( :-')  # no words: nothing, and no error
    expect(page.locator(".session-open")).to_have_count(0)
    expect(page.locator("#session-empty")).to_have_text("No chat holds these words.")
    expect(page.get_by_role("status")).to_have_text("")
    search.press("Escape")  # back to every chat
    expect(search).to_have_value("")
    expect(page.locator(".session-open")).to_have_count(3)
    expect(page.locator("#search-summary")).to_be_hidden()


def test_download_gives_the_chat_as_a_file(
    context: BrowserContext,
    page: Page,
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    model: str,
    tmp_path: Path,
) -> None:
    gateway = make_gateway(api_keys="k1")  # the download carries the key
    context.add_init_script("window.localStorage.setItem('martlet.apiKey', 'k1')")
    script(upstream, model, tokens=["Bring ", "a towel."])
    page.goto(gateway.url + "/")
    send(page, "Packing list: Lisbon / Porto")
    expect_final(page, "completed")
    session_id = session_of(page)

    page.get_by_text("Download", exact=True).click()
    with page.expect_download() as markdown_download:
        page.get_by_role("button", name="Markdown (.md)").click()
    markdown = markdown_download.value
    assert markdown.suggested_filename == "Packing-list-Lisbon-Porto.md"
    markdown.save_as(tmp_path / "chat.md")
    text = (tmp_path / "chat.md").read_text()
    assert text.startswith(f"# Packing list: Lisbon / Porto\n\n- Session: `{session_id}`\n")
    assert "## User · " in text
    assert text.endswith("Bring a towel.\n")
    expect(page.get_by_role("status")).to_have_text("Downloaded Packing-list-Lisbon-Porto.md.")

    page.get_by_text("Download", exact=True).click()
    with page.expect_download() as json_download:
        page.get_by_role("button", name="JSON (.json)").click()
    exported = json_download.value
    assert exported.suggested_filename == "Packing-list-Lisbon-Porto.json"
    exported.save_as(tmp_path / "chat.json")
    body = json.loads((tmp_path / "chat.json").read_text())
    with httpx.Client(base_url=gateway.url, headers={"Authorization": "Bearer k1"}) as client:
        saved = client.get(f"/sessions/{session_id}").json()
    assert body["session"]["title"] == "Packing list: Lisbon / Porto"
    assert body["messages"] == saved["messages"]
