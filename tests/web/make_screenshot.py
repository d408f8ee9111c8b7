"""Take the README's picture of the chat page mid-conversation (not a test)::

    .venv/bin/python -m tests.web.make_screenshot            # docs/screenshot.png
    .venv/bin/python -m tests.web.make_screenshot --phone    # also docs/screenshot-phone.png

A real gateway (SQLite in a temporary folder) and the fake upstream on 127.0.0.1, Debian's
Chromium through Playwright."""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from martlet_molt.config import Settings
from martlet_molt.testing import FakeUpstream, Script
from tests.gateway_server import GatewayServer
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS

DOCS = Path(__file__).resolve().parents[2] / "docs"
MODEL = "demo-model"

ANSWER = """A run owns the reply, so your connection can come and go:

1. **Start** it with `POST /chat/stream`; the headers carry `X-Run-Id`.
2. **Read** `GET /runs/{id}/stream`: every event has an `id`.
3. **Resume** after a drop with `Last-Event-ID` and nothing is lost or repeated.

```bash
curl -N -H 'Last-Event-ID: 12' http://127.0.0.1:8001/runs/RUN_ID/stream
```

The whole reply is saved to the session, whatever the client does."""

LIVE = """Here is a plan for the benchmark:

- Start **200 readers** on one run and check that each gets every event.
- Drop a third of them mid-stream, then resume them with `?after=N`.
- Compare each reader's text with the saved reply, character for character, and
  report the slowest reader's lag."""


def _chunks(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text)


def _send(page: Page, text: str) -> None:
    box = page.get_by_role("textbox", name="Message")
    box.fill(text)
    box.press("Enter")


def _final(page: Page) -> None:
    expect(page.locator("article.msg.assistant").last).to_have_attribute(
        "data-state", "completed", timeout=15_000
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--phone", action="store_true", help="also take a 390x844 picture")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, FakeUpstream() as upstream:
        settings = Settings(
            _env_file=None,  # pyright: ignore[reportCallIssue]
            openai_base_url=upstream.base_url,
            openai_api_key="demo",
            model=MODEL,
            database_url=f"sqlite:///{Path(folder) / 'demo.db'}",
        )
        with GatewayServer(settings) as gateway, sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            page.goto(gateway.url + "/")
            upstream.scripts_by_model[MODEL] = Script(tokens=["Sure, here you go."])
            for title in ("Plan a trip to Lisbon", "Explain SSE in two lines"):
                page.get_by_role("button", name="+ New chat").click()
                _send(page, title)
                _final(page)
            page.get_by_role("button", name="+ New chat").click()
            upstream.scripts_by_model[MODEL] = Script(tokens=_chunks(ANSWER))
            _send(page, "How does resuming a stream work?")
            _final(page)
            upstream.scripts_by_model[MODEL] = Script(tokens=_chunks(LIVE), delay=0.05)
            _send(page, "Plan a reader benchmark")
            time.sleep(1.6)  # mid-reply
            page.screenshot(path=str(DOCS / "screenshot.png"))
            if args.phone:
                phone = browser.new_page(viewport={"width": 390, "height": 844})
                phone.goto(page.url)
                time.sleep(0.8)
                phone.screenshot(path=str(DOCS / "screenshot-phone.png"))
            _final(page)
            browser.close()


if __name__ == "__main__":
    main()
