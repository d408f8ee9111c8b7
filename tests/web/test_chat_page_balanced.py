"""The chat page through nginx in front of two instances: its connection is cut mid-reply, and
its reconnect is served by the instance that does not own the run. The page still shows the
whole reply exactly once, equal to what the upstream sent and the store saved."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from martlet_molt.testing import FakeUpstream
from tests.cluster.conftest import StartCluster
from tests.cluster.instances import Cluster
from tests.conftest import script
from tests.web.conftest import IN_CI
from tests.web.cut_proxy import CutProxy
from tests.web.test_chat_page import (
    expect_final,
    reply,
    reply_text,
    send,
    seq_of,
    session_of,
    wait_seq,
    wait_until,
)

try:
    from playwright.sync_api import Page, Request, Route, expect
except ImportError:
    if IN_CI:
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)

pytestmark = pytest.mark.timeout(60)

TOKENS = [f"w{i} " for i in range(150)]
TEXT = "".join(TOKENS)
"""150 chunks 50 ms apart (7.5 s): still streaming after the cut and the reconnect."""
RESUMES = "**/runs/**/stream**"


def owner_of(cluster: Cluster, run_id: str) -> int:
    """The index of the instance that started the run (its log says so)."""
    owners = [
        n
        for n, instance in enumerate(cluster.instances)
        if f"run {run_id} started" in instance.log_text()
    ]
    assert len(owners) == 1, cluster.log_text()
    return owners[0]


def test_a_cut_page_resumes_through_nginx_on_the_instance_that_does_not_own_the_run(
    page: Page, start_cluster: StartCluster, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=TOKENS, delay=0.05)
    cluster = start_cluster(2, MARTLET_LOG_LEVEL="DEBUG")  # DEBUG: readers log their cursor
    balancer = cluster.balancer
    assert balancer is not None
    resumes: list[str] = []

    def on_request(request: Request) -> None:
        if re.search(r"/runs/[^/]+/stream\?", request.url):
            resumes.append(request.url)

    page.on("request", on_request)
    with CutProxy(balancer.port) as proxy:
        page.goto(proxy.url + "/")
        send(page, "Keep going")
        wait_seq(page, 15)
        run_id = reply(page).get_attribute("data-run-id")
        assert run_id is not None
        owner = cluster.instances[owner_of(cluster, run_id)]
        (other,) = [instance for instance in cluster.instances if instance is not owner]

        proxy.cut()  # the browser's connections to nginx are reset, new ones refused
        expect(reply(page)).to_have_attribute("data-state", "reconnecting", timeout=5_000)
        time.sleep(0.2)  # let a render already scheduled land
        seen = seq_of(page)
        del resumes[:]

        def steer(route: Route) -> None:
            # Round robin decides where this retry lands: make its turn the other instance's.
            balancer.steer_next_to(f"127.0.0.1:{other.port}")
            route.continue_()

        page.route(RESUMES, steer)
        proxy.restore()
        expect(reply(page)).to_have_attribute("data-state", "streaming", timeout=10_000)
        page.unroute(RESUMES)
        (record,) = [r for r in upstream.records if r.model == model]
        assert not record.completed, "the resume should follow the run live"

        expect_final(page, "completed")
        assert reply_text(page).strip() == TEXT.strip()
        assert seq_of(page) == len(TOKENS) + 1

        # The browser's own retry (the URL it first opened, `after=0`) got through to the
        # instance that does not own the run, and its Last-Event-ID asked for what came after
        # the last event shown: that instance followed the run live from there.
        target = f"/runs/{run_id}/stream?format=json&after=0"
        assert set(resumes) == {proxy.url + target}, resumes
        _, resumed = balancer.served(target, count=2)  # the stream cut, then the resumed one
        assert (resumed.status, resumed.upstream) == (200, f"127.0.0.1:{other.port}"), resumed
        connected = f"reader connected to run {run_id} after seq {seen}"
        assert connected in other.log_text(), other.log_text()
        assert connected not in owner.log_text(), owner.log_text()

        with httpx.Client(base_url=balancer.url, timeout=10.0) as client:
            run = client.get(f"/runs/{run_id}").json()
            assert (run["status"], run["content"]) == ("completed", TEXT)
            session = client.get(f"/sessions/{session_of(page)}").json()
            assert [(m["role"], m["content"]) for m in session["messages"]] == [
                ("user", "Keep going"),
                ("assistant", TEXT),
            ]

        page.reload()  # the history, read through nginx from whichever instance answers
        expect(page.locator("article.msg.user")).to_have_text("YouKeep going")
        expect(reply(page)).to_have_attribute("data-state", "completed")
        wait_until(lambda: reply_text(page).strip() == TEXT.strip(), what="the whole reply")
        assert page.locator("article.msg").count() == 2
    assert len([r for r in upstream.records if r.model == model]) == 1
