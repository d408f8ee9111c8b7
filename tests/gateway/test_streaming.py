"""Streaming over real HTTP: readers are only readers of a run's stream log, so they can hang
up, come back, arrive late or in parallel, and always see exactly the run's events."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import pytest

from martlet_molt.core.runs import RunManager
from martlet_molt.store.text import PART_CHARS
from martlet_molt.testing import FakeUpstream, RequestRecord
from tests.conftest import GatewayFactory, script
from tests.gateway_server import GatewayServer
from tests.sse_client import SseEvent, SseStream, parse_lines, read_sse, split_lines

pytestmark = pytest.mark.timeout(10)

FINAL = {"completed", "failed", "cancelled", "interrupted"}
Event = tuple[str | None, str, str]
"""(id, event type, data) of one SSE event: what two readers must agree on."""


def client_for(gateway: GatewayServer, read: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.url, timeout=httpx.Timeout(5.0, read=read))


def triples(events: list[SseEvent]) -> list[Event]:
    return [(e.id, e.event, e.data) for e in events]


def ids(events: list[SseEvent]) -> list[int]:
    return [int(e.id) for e in events if e.id is not None]


def json_text(events: list[SseEvent]) -> str:
    """The reply's text rebuilt from json-format `delta` events."""
    return "".join(e.json()["text"] for e in events if e.event == "delta")


def eventsource_text(text: str) -> str:
    """What an EventSource makes of text sent in `data:` lines: CR and CRLF become LF."""
    return re.sub(r"\r\n|\r", "\n", text)


async def wait_final(client: httpx.AsyncClient, run_id: str, timeout: float = 5.0) -> Any:  # noqa: ASYNC109
    """Poll `GET /runs/{id}` until the run is final (bounded); returns its JSON."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/runs/{run_id}")
        assert response.status_code == 200, response.text
        run = response.json()
        if run["status"] in FINAL:
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run['status']}"
        await asyncio.sleep(0.02)


def upstream_record(upstream: FakeUpstream, model: str) -> RequestRecord:
    records = [r for r in upstream.records if r.model == model]
    assert len(records) == 1, records
    return records[0]


async def start_json(
    client: httpx.AsyncClient, message: str = "hi", stop_after: int | None = None
) -> SseStream:
    stream = await read_sse(
        client,
        "POST",
        "/chat/stream?format=json",
        json_body={"message": message},
        stop_after=stop_after,
    )
    assert stream.status_code == 200, stream.comments
    return stream


def assert_complete_json(events: list[SseEvent], text: str) -> None:
    """A whole run in json format: contiguous ids from 1, text exact, one `done` at the end."""
    assert ids(events) == list(range(1, len(events) + 1))
    assert [e.event for e in events[:-1]] == ["delta"] * (len(events) - 1)
    assert events[-1].event == "done"
    assert events[-1].json()["status"] == "completed"
    assert events[-1].json()["error"] is None
    assert json_text(events) == text


# -- 1. a reader hanging up ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_disconnect_after_k_chunks_does_not_stop_the_run(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=50, delay=0.02)
    async with client_for(gateway) as client:
        first = await read_sse(
            client, "POST", "/chat/stream", json_body={"message": "tell me"}, stop_after=3
        )
        assert first.status_code == 200, first.comments
        assert len(first.events) == 3
        assert first.texts == sent.chunks[:3]
        run_id, session_id = first.headers["x-run-id"], first.headers["x-session-id"]

        during = (await client.get(f"/runs/{run_id}")).json()
        assert during["status"] == "streaming"  # the hang-up really was mid-stream
        assert len(during["content"]) < len(sent.text)

        run = await wait_final(client, run_id)
        assert run["status"] == "completed"
        assert run["content"] == sent.text
        assert run["error"] is None
        assert run["session_id"] == session_id

        session = (await client.get(f"/sessions/{session_id}")).json()
        messages = session["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[0]["content"] == "tell me"
        assert messages[1]["content"] == sent.text
        assert messages[1]["status"] == "completed"
        assert messages[1]["run_id"] == run_id
        assert session["active_run_id"] is None

    record = upstream_record(upstream, model)
    assert await upstream.wait_until_async(lambda _: record.finished, timeout=5)
    assert record.completed
    assert not record.client_disconnected
    assert not record.dropped
    assert record.chunks_sent == 50


# -- 2. several readers -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_concurrent_and_late_readers_get_identical_events(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=40, delay=0.02)
    async with client_for(gateway) as client:
        opener = await start_json(client, stop_after=1)
        run_id = opener.headers["x-run-id"]
        assert (await client.get(f"/runs/{run_id}")).json()["status"] == "streaming"

        url = f"/runs/{run_id}/stream?format=json"
        one, two = await asyncio.gather(read_sse(client, "GET", url), read_sse(client, "GET", url))
        run = await wait_final(client, run_id)
        assert run["status"] == "completed"
        late = await read_sse(client, "GET", url)

    for reader in (one, two, late):
        assert reader.status_code == 200, reader.comments
        assert_complete_json(reader.events, sent.text)
    assert len(one.events) == len(sent.chunks) + 1
    assert triples(one.events) == triples(two.events) == triples(late.events)
    assert triples(opener.events) == triples(one.events)[:1]


# -- 3. resuming --------------------------------------------------------------------------


async def _resume_all(client: httpx.AsyncClient, run_id: str, after: int) -> list[SseStream]:
    """Four resumes from `after`: json and text, by `Last-Event-ID` and by `?after=`."""
    url = f"/runs/{run_id}/stream"
    header = {"Last-Event-ID": str(after)}
    return list(
        await asyncio.gather(
            read_sse(client, "GET", f"{url}?format=json", headers=header),
            read_sse(client, "GET", f"{url}?format=json&after={after}"),
            read_sse(client, "GET", url, headers=header),
            read_sse(client, "GET", f"{url}?after={after}"),
        )
    )


def _assert_resumed(streams: list[SseStream], after: int, rest: str, last_seq: int) -> None:
    json_header, json_after, text_header, text_after = streams
    for stream in streams:
        assert stream.status_code == 200, stream.comments
    for stream in (json_header, json_after):
        assert ids(stream.events) == list(range(after + 1, last_seq + 1))
        assert stream.events[-1].event == "done"
        assert stream.events[-1].json()["status"] == "completed"
        assert json_text(stream.events) == rest
    assert triples(json_header.events) == triples(json_after.events)
    for stream in (text_header, text_after):
        got = ids(stream.events)
        assert got[0] == after + 1
        assert got == sorted(set(got))
        assert all(seq > after for seq in got)
        assert stream.texts[-1] == "[DONE]"
        assert "".join(stream.texts[:-1]) == rest
    assert triples(text_header.events) == triples(text_after.events)


@pytest.mark.asyncio
async def test_resume_gets_exactly_the_events_after_n(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=60, delay=0.02)
    async with client_for(gateway) as client:
        first = await start_json(client, stop_after=5)
        run_id = first.headers["x-run-id"]
        after = int(first.events[-1].id or "")
        assert ids(first.events) == [1, 2, 3, 4, 5]
        head = json_text(first.events)
        rest = sent.text[len(head) :]
        assert head + rest == sent.text
        assert head == "".join(sent.chunks[:5])
        last_seq = len(sent.chunks) + 1

        assert (await client.get(f"/runs/{run_id}")).json()["status"] == "streaming"
        live = await _resume_all(client, run_id, after)
        _assert_resumed(live, after, rest, last_seq)

        assert (await wait_final(client, run_id))["status"] == "completed"
        ended = await _resume_all(client, run_id, after)
        _assert_resumed(ended, after, rest, last_seq)
        for a, b in zip(live, ended, strict=True):
            assert triples(a.events) == triples(b.events)

        # Reassembled: the first part plus the resumed part is the reply, once.
        assert head + json_text(live[0].events) == sent.text
        assert ids(first.events) + ids(live[0].events) == list(range(1, last_seq + 1))


# -- 4. awkward text ----------------------------------------------------------------------

AWKWARD = [
    "line1\nline2",
    "\r",
    "a\r\nb",
    "[DONE]",
    "[ERROR] x",
    "\n\nevent: x\ndata: injected\n\n",
    "emoji 😀🎉",
    "中文字符",
    " leading space",
    "",
    "\u2028",
    "trailing\n",
]


@pytest.mark.asyncio
async def test_awkward_text_round_trips_exactly_in_json_format(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, tokens=AWKWARD)
    pieces = [token for token in AWKWARD if token]
    async with client_for(gateway) as client:
        stream = await start_json(client)
        run = await wait_final(client, stream.headers["x-run-id"])

    assert_complete_json(stream.events, sent.text)
    assert [e.event for e in stream.events] == ["delta"] * len(pieces) + ["done"]
    assert [e.json()["text"] for e in stream.events[:-1]] == pieces
    assert run["content"] == sent.text


@pytest.mark.asyncio
async def test_awkward_text_round_trips_in_text_format(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, tokens=AWKWARD)
    async with client_for(gateway) as client:
        stream = await read_sse(client, "POST", "/chat/stream", json_body={"message": "hi"})
        assert stream.status_code == 200, stream.comments
        run = await wait_final(client, stream.headers["x-run-id"])

    assert run["content"] == sent.text
    assert {e.event for e in stream.events} == {"message"}
    assert "".join(stream.texts[:-1]) == eventsource_text(sent.text)
    # A client of the text format stops at the first `[DONE]`: it must be the last event only.
    assert stream.texts[-1] == "[DONE]"
    assert stream.texts.count("[DONE]") == 1, stream.texts


@pytest.mark.asyncio
async def test_text_format_delta_never_looks_like_an_error_marker(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    """A successful run's text stream must not contain an event a client reads as failure."""
    script(upstream, model, tokens=["before ", "[ERROR] x", " after"])
    async with client_for(gateway) as client:
        stream = await read_sse(client, "POST", "/chat/stream", json_body={"message": "hi"})
        run = await wait_final(client, stream.headers["x-run-id"])

    assert run["status"] == "completed"
    assert stream.texts[-1] == "[DONE]"
    assert [t for t in stream.texts if t.startswith("[ERROR]")] == [], stream.texts


# -- 5. a silent upstream -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_reader_stays_open_through_upstream_silence_with_pings(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(sse_ping_seconds=0.3)
    sent = script(upstream, model, tokens=["after ", "the ", "silence"], first_delay=2.0)
    stream = SseStream()
    pings_before_first: int | None = None
    # A 1 s read timeout: only the pings keep this connection alive through 2 s of silence.
    async with (
        client_for(gateway, read=1.0) as client,
        client.stream("POST", "/chat/stream", json={"message": "hi"}) as response,
    ):
        assert response.status_code == 200
        async for _ in parse_lines(split_lines(response.aiter_text()), stream):
            if pings_before_first is None:
                pings_before_first = len(stream.comments)

    assert pings_before_first is not None
    assert pings_before_first >= 2, stream.comments
    assert set(stream.comments) == {"ping"}
    assert stream.texts == [*sent.chunks, "[DONE]"]


# -- 6. headers ---------------------------------------------------------------------------


def _assert_sse_headers(stream: SseStream) -> None:
    assert stream.status_code == 200, stream.comments
    headers = stream.headers
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert headers["content-type"].split(";")[0].strip() == "text/event-stream"
    assert "content-encoding" not in headers


@pytest.mark.asyncio
async def test_sse_headers_on_both_endpoints(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=3)
    accept = {"Accept-Encoding": "gzip, deflate"}
    async with client_for(gateway) as client:
        posted = await read_sse(
            client, "POST", "/chat/stream", json_body={"message": "hi"}, headers=accept
        )
        run_id = posted.headers["x-run-id"]
        _assert_sse_headers(posted)
        assert posted.headers["x-session-id"]
        await wait_final(client, run_id)
        for query in ("", "?format=json"):
            resumed = await read_sse(client, "GET", f"/runs/{run_id}/stream{query}", headers=accept)
            _assert_sse_headers(resumed)
            assert resumed.headers["x-run-id"] == run_id
            assert resumed.headers["x-session-id"] == posted.headers["x-session-id"]
    assert posted.texts == [*sent.chunks, "[DONE]"]


# -- 7. bad resumes -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_bad_resumes_are_refused(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, token_count=4)
    async with client_for(gateway) as client:
        stream = await start_json(client)
        run_id = stream.headers["x-run-id"]
        await wait_final(client, run_id)
        last_seq = int(stream.events[-1].id or "")
        assert last_seq == 5
        url = f"/runs/{run_id}/stream"

        bad_header = await client.get(url, headers={"Last-Event-ID": "abc"})
        assert bad_header.status_code == 422, bad_header.text
        assert bad_header.json()["error"]["code"] == "invalid_request"

        past_end = await client.get(f"{url}?after={last_seq + 1}")
        assert past_end.status_code == 422, past_end.text
        assert past_end.json()["error"]["code"] == "invalid_request"
        assert past_end.json()["error"]["details"] == {"last_seq": last_seq}

        past_end_header = await client.get(url, headers={"Last-Event-ID": str(last_seq + 1)})
        assert past_end_header.status_code == 422, past_end_header.text

        unknown = await client.get("/runs/run_doesnotexist/stream")
        assert unknown.status_code == 404, unknown.text
        assert unknown.json()["error"]["code"] == "run_not_found"

        xml = await client.get(f"{url}?format=xml")
        assert xml.status_code == 422, xml.text

        at_end = await read_sse(client, "GET", f"{url}?after={last_seq}")
        assert at_end.status_code == 200
        assert at_end.events == []


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "value",
    [b"-1", b"1.5", b"0x2", "\u00b2".encode("latin-1"), b"9" * 5000],
    ids=["negative", "fraction", "hex", "superscript-two", "5000-digits"],
)
async def test_malformed_last_event_id_is_a_422_not_a_500(
    gateway: GatewayServer, upstream: FakeUpstream, model: str, value: bytes
) -> None:
    script(upstream, model, token_count=2)
    async with client_for(gateway) as client:
        stream = await start_json(client)
        run_id = stream.headers["x-run-id"]
        await wait_final(client, run_id)
        response = await client.get(f"/runs/{run_id}/stream", headers={b"Last-Event-ID": value})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"


# -- 8. after eviction --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_resume_after_eviction_replays_the_same_events_from_the_store(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(run_retention_seconds=0, eviction_interval_seconds=0.2)
    runs: RunManager = gateway.app.state.runs
    tokens = ["Hello", " 😀", " 中文", "\r\n", "line", " [DONE]", "\u2028", " end\n"]
    sent = script(upstream, model, tokens=tokens, delay=0.01)
    async with client_for(gateway) as client:
        live = await start_json(client)
        run_id, session_id = live.headers["x-run-id"], live.headers["x-session-id"]
        assert_complete_json(live.events, sent.text)
        done = live.events[-1].json()
        assert done["usage"] is not None

        deadline = time.monotonic() + 3.0
        while runs.logs.get(run_id) is not None:
            assert time.monotonic() < deadline, "the finished log was never evicted"
            await asyncio.sleep(0.05)

        after = 3
        url = f"/runs/{run_id}/stream?format=json"
        resumed = await read_sse(client, "GET", f"{url}&after={after}")
        by_header = await read_sse(client, "GET", url, headers={"Last-Event-ID": str(after)})
        whole = await read_sse(client, "GET", url)
        text = await read_sse(client, "GET", f"/runs/{run_id}/stream?after={after}")

        run = (await client.get(f"/runs/{run_id}")).json()

    assert runs.logs.get(run_id) is None  # answered from the store, not reloaded
    for stream in (resumed, by_header, whole, text):
        assert stream.status_code == 200, stream.comments
    assert triples(resumed.events) == triples(live.events)[after:]
    assert triples(by_header.events) == triples(live.events)[after:]
    assert triples(whole.events) == triples(live.events)
    assert [int(e.id or "") for e in text.events] == ids(live.events)[after:]
    assert "".join(text.texts[:-1]) == eventsource_text("".join(tokens[after:]))
    assert text.texts[-1] == "[DONE]"

    assert run["run_id"] == run_id
    assert run["session_id"] == session_id
    assert run["status"] == "completed"
    assert run["content"] == sent.text
    assert run["error"] is None
    assert run["usage"] == done["usage"]
    assert run["completed_at"] is not None


@pytest.mark.asyncio
async def test_a_reply_longer_than_a_saved_part_reads_back_whole_from_the_store(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    """A reply of several parts (checkpointed while it streams, then saved in parts) is the
    same text and the same events once its log is gone: in the run, in the session and in a
    replay. The client hangs up half-way; the run goes on."""
    gateway = make_gateway(
        run_retention_seconds=0, eviction_interval_seconds=0.2, checkpoint_seconds=0.05
    )
    runs: RunManager = gateway.app.state.runs
    sent = script(upstream, model, token_count=300, token_text="é{i}€" + "x" * 600, delay=0.001)
    assert len(sent.text) > 2 * PART_CHARS
    async with client_for(gateway) as client:
        partial = await start_json(client, "tell me everything", stop_after=50)
        run_id, session_id = partial.headers["x-run-id"], partial.headers["x-session-id"]
        run = await wait_final(client, run_id)
        deadline = time.monotonic() + 3.0
        while runs.logs.get(run_id) is not None:
            assert time.monotonic() < deadline, "the finished log was never evicted"
            await asyncio.sleep(0.05)

        saved = (await client.get(f"/runs/{run_id}")).json()
        session = (await client.get(f"/sessions/{session_id}")).json()
        replay = await read_sse(client, "GET", f"/runs/{run_id}/stream?format=json")

    assert (run["status"], run["content"]) == ("completed", sent.text)
    assert (saved["status"], saved["content"]) == ("completed", sent.text)
    assert [(m["role"], m["content"]) for m in session["messages"]] == [
        ("user", "tell me everything"),
        ("assistant", sent.text),
    ]
    assert_complete_json(replay.events, sent.text)
    assert len(replay.events) == 301  # a delta per chunk, then `done`
    assert triples(replay.events)[:50] == triples(partial.events)


# -- 9. many chunks -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_two_thousand_chunks_arrive_exactly_with_contiguous_ids(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=2000, token_text="t{i},")
    async with client_for(gateway) as client:
        stream = await start_json(client)
        run_id = stream.headers["x-run-id"]
        run = await wait_final(client, run_id)
        text = await read_sse(client, "GET", f"/runs/{run_id}/stream")

    assert len(stream.events) == 2001
    assert_complete_json(stream.events, sent.text)
    assert ids(stream.events) == list(range(1, 2002))
    assert [e.json()["text"] for e in stream.events[:-1]] == sent.chunks
    assert run["status"] == "completed"
    assert run["content"] == sent.text
    assert text.texts == [*sent.chunks, "[DONE]"]
