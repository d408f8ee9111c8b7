"""The chat page in a real browser (Debian's Chromium via Playwright) against a real gateway and
the fake upstream on 127.0.0.1: it streams, survives reloads, cuts, second tabs and closed
tabs with the reply exactly equal to the upstream's text, and it stops, fails and asks for keys
in plain sight."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from martlet_molt.testing import FakeUpstream
from tests.conftest import GatewayFactory, script
from tests.gateway_server import GatewayServer
from tests.web.conftest import ARTIFACTS, IN_CI
from tests.web.cut_proxy import CutProxy

try:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page, Route, expect
except ImportError:
    if IN_CI:
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)

pytestmark = pytest.mark.timeout(20)

TOKENS = [f"w{i} " for i in range(150)]
TEXT = "".join(TOKENS)
"""What the upstream streams: 150 chunks, 20 ms apart (3 s), with no markdown syntax, so the
rendered text is the upstream's text."""

FINAL_TIMEOUT_MS = 15_000


# ---------------------------------------------------------------- helpers


def reply(page: Page) -> Locator:
    """The last assistant message on the page."""
    return page.locator("article.msg.assistant").last


def reply_text(page: Page) -> str:
    """The rendered text of the last reply (its markdown parts, not its notes)."""
    return "".join(reply(page).locator(".md").all_text_contents())


def seq_of(page: Page) -> int:
    return int(reply(page).get_attribute("data-seq") or 0)


def wait_until(
    check: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "condition",
    page: Page | None = None,
) -> Any:
    """Poll `check` until it returns something truthy (bounded). With `page`, wait through
    Playwright, whose sync API runs event and route handlers only while it is called."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if page is not None:
            page.wait_for_timeout(30)
        else:
            time.sleep(0.03)


def wait_seq(page: Page, at_least: int) -> int:
    """Wait until the page has rendered events up to `at_least`; returns the seq shown."""
    return wait_until(
        lambda: (s := seq_of(page)) >= at_least and s, what=f"seq {at_least} on the page"
    )


def send(page: Page, message: str) -> None:
    """Type a message and press Enter, as a person would."""
    box = page.get_by_role("textbox", name="Message")
    box.fill(message)
    box.press("Enter")


def expect_final(page: Page, status: str) -> None:
    expect(reply(page)).to_have_attribute("data-state", status, timeout=FINAL_TIMEOUT_MS)


def session_of(page: Page) -> str:
    """The session id the page keeps in its URL."""
    wait_until(lambda: "#session=" in page.url, what="a session id in the URL")
    return page.url.split("#session=", 1)[1]


def api(gateway: GatewayServer, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=gateway.url, headers=headers, timeout=5.0)


def saved_session(gateway: GatewayServer, session_id: str, key: str | None = None) -> Any:
    with api(gateway, key) as client:
        response = client.get(f"/sessions/{session_id}")
        assert response.status_code == 200, response.text
        return response.json()


def run_of(gateway: GatewayServer, run_id: str, key: str | None = None) -> Any:
    with api(gateway, key) as client:
        response = client.get(f"/runs/{run_id}")
        assert response.status_code == 200, response.text
        return response.json()


def wait_run_final(gateway: GatewayServer, run_id: str, key: str | None = None) -> Any:
    return wait_until(
        lambda: (
            (run := run_of(gateway, run_id, key))["status"] != "streaming"
            and run["status"] != "pending"
            and run
        ),
        what=f"run {run_id} to end",
    )


def assert_saved(gateway: GatewayServer, page: Page, message: str, status: str = "completed"):
    """The session in the store holds the message and exactly the reply the page shows."""
    detail = saved_session(gateway, session_of(page))
    assert detail["active_run_id"] is None
    assert [(m["role"], m["status"]) for m in detail["messages"]] == [
        ("user", "completed"),
        ("assistant", status),
    ]
    assert detail["messages"][0]["content"] == message
    assert detail["messages"][1]["content"].strip() == reply_text(page).strip()
    return detail


@pytest.fixture
def streaming(upstream: FakeUpstream, model: str) -> FakeUpstream:
    """The upstream answers this test's model with TOKENS, 20 ms apart."""
    script(upstream, model, tokens=TOKENS, delay=0.02)
    return upstream


@pytest.fixture
def proxy(gateway: GatewayServer) -> Iterator[CutProxy]:
    """The gateway behind a proxy whose connections the test can cut."""
    with CutProxy(gateway.port) as cut_proxy:
        yield cut_proxy


# ---------------------------------------------------------------- tests


@pytest.mark.usefixtures("streaming")
def test_a_message_streams_and_is_saved(page: Page, gateway: GatewayServer) -> None:
    page.goto(gateway.url + "/")
    expect(page.get_by_role("textbox", name="Message")).to_be_focused()
    send(page, "Tell me the words")

    expect(page.locator("article.msg.user")).to_have_text("YouTell me the words")
    expect(reply(page)).to_have_attribute("data-state", "streaming")
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    partial_seq = wait_seq(page, 5)
    partial = reply_text(page).strip()
    assert partial_seq < len(TOKENS), "the reply should be seen while it streams"
    assert TEXT.startswith(partial)
    assert len(partial) < len(TEXT.strip())

    expect_final(page, "completed")
    assert reply_text(page).strip() == TEXT.strip()
    assert seq_of(page) == len(TOKENS) + 1  # every delta, then the end
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    detail = assert_saved(gateway, page, "Tell me the words")
    assert detail["messages"][1]["content"] == TEXT
    # The chat is listed, titled by its first message, and marked current.
    current = page.locator(".session-open[aria-current=page]")
    expect(current).to_contain_text("Tell me the words")


@pytest.mark.usefixtures("streaming")
def test_reload_mid_stream_continues_with_no_gap_or_duplicate(
    page: Page, gateway: GatewayServer
) -> None:
    page.goto(gateway.url + "/")
    send(page, "Words, please")
    before = wait_seq(page, 20)
    run_id = reply(page).get_attribute("data-run-id")
    assert run_id is not None
    assert run_of(gateway, run_id)["status"] == "streaming"

    page.reload()
    # The text so far comes back at once, then the reply carries on live.
    expect(reply(page)).to_have_attribute("data-run-id", run_id)
    expect(reply(page)).to_have_attribute("data-state", "streaming")
    assert wait_seq(page, before) < len(TOKENS)
    expect_final(page, "completed")
    assert reply_text(page).strip() == TEXT.strip()
    assert page.locator("article.msg.assistant").count() == 1
    assert page.locator("article.msg.user").count() == 1
    assert_saved(gateway, page, "Words, please")


def test_a_cut_connection_resumes_where_it_left_off(
    page: Page, gateway: GatewayServer, proxy: CutProxy, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=TOKENS, delay=0.05)  # 7.5 s: still live after the cut
    resumes: list[tuple[str, str | None]] = []
    page.on(
        "request",
        lambda r: (
            resumes.append((r.url, r.all_headers().get("last-event-id")))
            if "/runs/" in r.url and "/stream?" in r.url
            else None
        ),
    )
    page.goto(proxy.url + "/")
    send(page, "Keep going")
    wait_seq(page, 15)
    run_id = reply(page).get_attribute("data-run-id")
    assert run_id is not None

    proxy.cut()  # every connection reset, new ones refused
    expect(reply(page)).to_have_attribute("data-state", "reconnecting", timeout=5_000)
    expect(reply(page).locator(".msg-state")).to_contain_text("reconnecting")
    time.sleep(0.2)  # let a render already scheduled land
    seen = seq_of(page)
    del resumes[:]
    # The proxy is back, but the route stays blocked until a retry has failed on it.
    blocked: list[str] = []

    def block(route: Route) -> None:
        blocked.append(route.request.url)
        route.abort()

    page.route("**/runs/**/stream**", block)
    proxy.restore()
    wait_until(lambda: blocked, timeout=8, what="a retry to be blocked", page=page)
    assert len(run_of(gateway, run_id)["content"]) > len(reply_text(page)) + 40
    assert seq_of(page) == seen, "nothing can arrive while the connection is cut"
    page.unroute("**/runs/**/stream**")

    expect(reply(page)).to_have_attribute("data-state", "streaming", timeout=8_000)
    assert run_of(gateway, run_id)["status"] == "streaming"
    expect_final(page, "completed")
    assert reply_text(page).strip() == TEXT.strip()
    assert_saved(gateway, page, "Keep going")
    # The retry that got through asked for the events after the last one shown: the
    # browser's own retry with Last-Event-ID, the page's with ?after=.
    assert len(resumes) >= 2, resumes  # one blocked, one through
    url, last_event_id = resumes[-1]
    assert last_event_id == str(seen) or f"after={seen}&" in url + "&", resumes


def test_stop_cancels_the_run_and_keeps_the_partial_reply(
    page: Page, gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=[f"w{i} " for i in range(500)], delay=0.02)
    page.goto(gateway.url + "/")
    send(page, "A long one")
    wait_seq(page, 10)
    page.get_by_role("button", name="Stop").click()

    expect_final(page, "cancelled")
    expect(reply(page).locator(".msg-state")).to_contain_text("cancelled")
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    expect(page.get_by_role("textbox", name="Message")).to_be_focused()
    shown = reply_text(page).strip()
    assert shown
    assert "".join(f"w{i} " for i in range(500)).startswith(shown)
    run_id = reply(page).get_attribute("data-run-id")
    assert run_id is not None
    run = run_of(gateway, run_id)
    assert run["status"] == "cancelled"
    assert run["content"].strip() == shown
    assert_saved(gateway, page, "A long one", status="cancelled")
    records = [r for r in upstream.records if r.model == model]
    assert records
    assert records[0].chunks_sent < 500, "the upstream should have been stopped"


def test_escape_stops_from_the_keyboard(
    page: Page, gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=[f"w{i} " for i in range(500)], delay=0.02)
    page.goto(gateway.url + "/")
    send(page, "Stop me")
    wait_seq(page, 5)
    page.get_by_role("textbox", name="Message").press("Escape")
    expect_final(page, "cancelled")


@pytest.mark.usefixtures("streaming")
def test_a_second_tab_sees_the_same_live_reply(
    context: BrowserContext, page: Page, gateway: GatewayServer
) -> None:
    page.goto(gateway.url + "/")
    send(page, "Two tabs")
    wait_seq(page, 10)
    url = page.url
    assert "#session=" in url

    second = context.new_page()
    second.goto(url)
    expect(reply(second)).to_have_attribute("data-state", "streaming")
    assert seq_of(second) < len(TOKENS)

    expect_final(page, "completed")
    expect_final(second, "completed")
    assert reply_text(page).strip() == TEXT.strip()
    assert reply_text(second).strip() == TEXT.strip()
    assert_saved(gateway, second, "Two tabs")


@pytest.mark.usefixtures("streaming")
def test_a_closed_tab_finds_the_whole_reply_in_the_history(
    context: BrowserContext, page: Page, gateway: GatewayServer
) -> None:
    page.goto(gateway.url + "/")
    send(page, "I will be back")
    wait_seq(page, 5)
    url = page.url
    run_id = reply(page).get_attribute("data-run-id")
    assert run_id is not None
    page.close()
    assert wait_run_final(gateway, run_id)["status"] == "completed"

    back = context.new_page()
    back.goto(url)
    expect(reply(back)).to_have_attribute("data-state", "completed")
    expect(reply(back)).not_to_have_attribute("aria-busy", "true")
    assert reply_text(back).strip() == TEXT.strip()
    assert_saved(gateway, back, "I will be back")


def test_a_failed_run_shows_its_reason(
    page: Page, make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=[f"w{i} " for i in range(20)], delay=0.01, fail_after=5)
    gateway = make_gateway(upstream_max_retries=0)
    page.goto(gateway.url + "/")
    send(page, "Break")
    expect_final(page, "failed")
    state_line = reply(page).locator(".msg-state")
    expect(state_line).to_contain_text("Failed: ")
    run_id = reply(page).get_attribute("data-run-id")
    assert run_id is not None
    run = run_of(gateway, run_id)
    assert run["status"] == "failed"
    assert run["error"]
    assert run["error"] in (state_line.text_content() or "")
    assert run["content"].strip() == reply_text(page).strip() == "w0 w1 w2 w3 w4"

    page.reload()  # the history shows the failure and its reason too
    expect(reply(page)).to_have_attribute("data-state", "failed")
    expect(reply(page).locator(".msg-state")).to_contain_text(run["error"])


def test_a_reply_cut_at_its_token_limit_says_so(
    page: Page, gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=["Once ", "upon ", "a"], finish_reason="length")
    page.goto(gateway.url + "/")
    send(page, "A long story")
    expect_final(page, "completed")
    expect(reply(page).locator(".msg-state")).to_have_text("Cut at the length limit.")
    assert reply_text(page).strip() == "Once upon a"


def test_a_gateway_shutdown_shows_the_reply_as_interrupted(
    page: Page, make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=[f"w{i} " for i in range(500)], delay=0.02)
    gateway = make_gateway(shutdown_grace_seconds=0)
    page.goto(gateway.url + "/")
    send(page, "Until the server stops")
    wait_seq(page, 5)
    gateway.stop()  # as SIGTERM: running runs are interrupted, their readers get the end
    expect_final(page, "interrupted")
    expect(reply(page).locator(".msg-state")).to_contain_text("Interrupted")
    assert "".join(f"w{i} " for i in range(500)).startswith(reply_text(page).strip())


def test_markdown_is_rendered_and_sanitised(
    page: Page, gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(
        upstream,
        model,
        tokens=[
            "# Title\n\n",
            "Some **bold** and `code`.\n\n",
            '<img src="x" onerror="window.__xss = 1">\n\n',
            "<script>window.__xss = 2</script>\n\n",
            "[click](javascript:window.__xss=3) [docs](https://example.org/a)",
        ],
    )
    page.goto(gateway.url + "/")
    send(page, "Markdown")
    expect_final(page, "completed")
    body = reply(page).locator(".md")
    expect(body.locator("h1")).to_have_text("Title")
    expect(body.locator("strong")).to_have_text("bold")
    expect(body.locator("code")).to_have_text("code")
    assert body.locator("script").count() == 0
    assert body.locator("[onerror]").count() == 0
    assert body.locator("a[href^='javascript']").count() == 0
    link = body.locator("a[href='https://example.org/a']")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    body.locator("text=click").click()
    assert page.evaluate("() => window.__xss === undefined")


def test_sessions_new_switch_and_delete(
    page: Page, gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=["Short ", "answer."])
    page.goto(gateway.url + "/")
    send(page, "First chat")
    expect_final(page, "completed")
    first = session_of(page)

    page.get_by_role("button", name="+ New chat").click()
    expect(page.get_by_role("textbox", name="Message")).to_be_focused()
    assert "#session=" not in page.url
    expect(page.locator("article.msg")).to_have_count(0)
    send(page, "Second chat")
    expect_final(page, "completed")
    second = session_of(page)
    assert second != first
    sessions = page.locator(".session-open")
    expect(sessions).to_have_count(2)

    page.locator(".session-open", has_text="First chat").click()
    expect(page.locator("article.msg.user")).to_have_text("YouFirst chat")
    assert session_of(page) == first
    expect(page.locator(".session-open[aria-current=page]")).to_contain_text("First chat")

    page.go_back()  # the URL keeps the chat: back returns to the second one
    expect(page.locator("article.msg.user")).to_have_text("YouSecond chat")

    delete = page.get_by_role("button", name="Delete chat First chat")
    delete.click()
    page.get_by_role("button", name="Confirm: delete chat First chat").click()
    expect(sessions).to_have_count(1)
    expect(sessions.first).to_contain_text("Second chat")
    with api(gateway) as client:
        assert client.get(f"/sessions/{first}").status_code == 404
        assert client.get(f"/sessions/{second}").status_code == 200


@pytest.mark.usefixtures("streaming")
def test_with_api_keys_the_page_asks_for_one_and_streams(
    context: BrowserContext, page: Page, make_gateway: GatewayFactory
) -> None:
    gateway = make_gateway(api_keys="k1")
    streams: list[str] = []
    page.on(
        "request",
        lambda r: streams.append(r.url) if "/runs/" in r.url and "/stream?" in r.url else None,
    )
    page.goto(gateway.url + "/")
    expect(page.locator("#key-panel")).to_have_attribute("open", "")
    expect(page.get_by_role("status")).to_contain_text("needs an API key")
    key = page.get_by_label("API key for this gateway")
    expect(key).to_be_focused()
    key.fill("k1")
    key.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("API key saved")

    send(page, "With a key")
    wait_seq(page, 5)
    page.reload()  # the key is remembered, the reply resumes
    expect_final(page, "completed")
    assert reply_text(page).strip() == TEXT.strip()
    assert streams
    assert all("api_key=k1" in url for url in streams)
    detail = saved_session(gateway, session_of(page), key="k1")
    assert detail["messages"][1]["content"] == TEXT
    origins = context.storage_state().get("origins", [])
    assert {"name": "martlet.apiKey", "value": "k1"} in origins[0]["localStorage"]
    with api(gateway) as client:
        assert client.get(f"/sessions/{session_of(page)}").status_code == 401


def test_a_phone_sized_viewport(browser: Browser, gateway: GatewayServer) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True)
    try:
        page = context.new_page()
        page.goto(gateway.url + "/")
        toggle = page.get_by_role("button", name="Chats")
        expect(toggle).to_be_visible()
        expect(page.get_by_role("button", name="+ New chat")).to_be_hidden()
        send(page, "Small screen")
        expect_final(page, "completed")
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390

        toggle.click()
        expect(toggle).to_have_attribute("aria-expanded", "true")
        expect(page.get_by_role("button", name="+ New chat")).to_be_focused()
        expect(page.locator(".session-open")).to_have_count(1)
        page.keyboard.press("Escape")
        expect(toggle).to_have_attribute("aria-expanded", "false")
        expect(toggle).to_be_focused()
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        for number, open_page in enumerate(context.pages, start=1):
            open_page.screenshot(path=str(ARTIFACTS / f"test_a_phone_sized_viewport-{number}.png"))
        raise
    finally:
        context.close()
