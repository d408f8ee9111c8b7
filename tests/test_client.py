"""The terminal client against a real gateway and the fake upstream: `martlet-molt chat`,
`attach`, `sessions` and `runs show` in subprocesses (or in-process for the quick ones), and
`GatewayClient` directly. A cuttable TCP proxy between client and gateway drops every
connection mid-stream; the client must reconnect by itself and print the reply exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pty
import re
import signal
import sys
import time
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from rich.cells import cell_len
from rich.console import Console
from typer.testing import CliRunner

from martlet_molt import terminal
from martlet_molt.cli import cli
from martlet_molt.client import ConnectionLost, GatewayClient, StreamEvent
from martlet_molt.testing import FakeUpstream, Script
from tests.conftest import GatewayFactory, script
from tests.gateway_server import GatewayServer
from tests.sse_client import read_sse

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(15)]

TRICKY = ["Hel", "lo,\n", "wörld ", "[DONE]", " **bold**\r\n", "tab\tend"]
"""Chunks whose exact text a careless client would mangle (line breaks, a fake end marker)."""

RUN_ID = re.compile(r"run_[0-9a-f]{32}")
DURATION = re.compile(r"  \((\d+ ms|\d+\.\d s)\)$")


# --------------------------------------------------------------------------- helpers


def cli_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTLET_")}
    return {**env, "MARTLET_URL": url}


@contextlib.asynccontextmanager
async def spawn(
    url: str, *args: str, stdin: Any = asyncio.subprocess.DEVNULL
) -> AsyncIterator[Process]:
    """`python -m martlet_molt ARGS` with `MARTLET_URL=url`; killed if still running at the end."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "martlet_molt",
        *args,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(url),
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


async def run_cli(url: str, *args: str) -> tuple[int | None, str, str]:
    """Run the command to its end: (exit code, stdout, stderr)."""
    async with spawn(url, *args) as proc:
        out, err = await asyncio.wait_for(proc.communicate(), 12)
    return proc.returncode, out.decode(), err.decode()


async def wait_final(url: str, run_id: str, timeout: float = 8.0) -> dict[str, Any]:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url) as client:
        while True:
            run: dict[str, Any] = (await client.get(f"/runs/{run_id}")).json()
            if run["status"] not in {"pending", "streaming"}:
                return run
            assert time.monotonic() < deadline, run
            await asyncio.sleep(0.05)


@dataclass
class Link:
    """One proxied connection: what the client sent and what it was sent back."""

    request: bytearray = field(default_factory=bytearray)
    response: bytearray = field(default_factory=bytearray)
    writers: list[asyncio.StreamWriter] = field(default_factory=list[asyncio.StreamWriter])

    @property
    def is_stream(self) -> bool:
        return b"/stream" in self.request[:200]

    @property
    def deltas(self) -> int:
        return self.response.count(b"event: delta")


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of the gateway; `cut()` drops every open connection
    (as a network failure would) and the proxy keeps accepting new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.links: list[Link] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    @property
    def stream_links(self) -> list[Link]:
        return [link for link in self.links if link.is_stream]

    async def __aenter__(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop_accepting(self) -> None:
        assert self._server is not None
        self._server.close()

    def cut(self) -> None:
        for link in self.links:
            for writer in link.writers:
                writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = Link(writers=[writer])
        self.links.append(link)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        link.writers.append(up_writer)
        for source, sink, record in (
            (reader, up_writer, link.request),
            (up_reader, writer, link.response),
        ):
            task = asyncio.create_task(self._pump(source, sink, record))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: bytearray
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await source.read(65536):
                record.extend(chunk)
                sink.write(chunk)
                await sink.drain()
        sink.transport.abort()


def invoke(*args: str, **env: str) -> Any:
    """The CLI in this process (quick: no interpreter start-up)."""
    return CliRunner().invoke(cli, list(args), env=env)


def started_run_id(stderr: str) -> str:
    match = RUN_ID.search(stderr)
    assert match, stderr
    return match.group()


# --------------------------------------------------------------------------- chat


async def test_chat_prints_exactly_the_reply(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    reply = script(upstream, model, tokens=TRICKY, delay=0.01)
    gateway = make_gateway()

    code, out, err = await run_cli(gateway.url, "chat", "hi", "--session", "cli-text")

    assert code == 0, err
    assert out == reply.text
    run_id = started_run_id(err)
    assert f"session cli-text · run {run_id} · {model}" in err
    assert f"run {run_id} completed" in err


async def test_chat_json_prints_one_line_per_event(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    reply = script(upstream, model, tokens=TRICKY, delay=0.01)
    gateway = make_gateway()

    result = await asyncio.to_thread(invoke, "chat", "hi", "-f", "json", MARTLET_URL=gateway.url)

    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert "".join(e["data"]["text"] for e in events if e["event"] == "delta") == reply.text
    assert events[-1]["event"] == "done"
    assert events[-1]["data"]["status"] == "completed"
    assert [e["event"] for e in events[:-1]] == ["delta"] * len(TRICKY)


async def test_chat_reconnects_mid_stream_with_no_duplicate(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    reply = script(upstream, model, token_count=40, token_text="w{i} ", delay=0.03)
    gateway = make_gateway()

    async with (
        CuttableProxy(gateway.port) as proxy,
        spawn(proxy.url, "chat", "tell me", "--format", "text") as proc,
    ):
        assert proc.stdout is not None
        printed = b""
        while b"w2 " not in printed:  # the client has printed three deltas
            printed += await asyncio.wait_for(proc.stdout.read(4096), 12)
        proxy.cut()
        rest, err = await asyncio.wait_for(proc.communicate(), 12)

    assert proc.returncode == 0, err.decode()
    assert (printed + rest).decode() == reply.text
    assert len(proxy.stream_links) >= 2
    assert proxy.stream_links[1].deltas >= 1  # the cut was mid-stream
    resume = proxy.stream_links[1].request.decode()
    assert resume.startswith(f"GET /runs/{started_run_id(err.decode())}/stream")
    seen = re.search(r"last-event-id: (\d+)", resume, re.IGNORECASE)
    assert seen is not None, resume
    assert int(seen.group(1)) >= 3, resume


async def test_ctrl_c_without_a_terminal_leaves_the_run_running(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    reply = script(upstream, model, token_count=40, token_text="t{i} ", delay=0.05)
    gateway = make_gateway()
    async with spawn(gateway.url, "chat", "hi") as proc:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.read(1), 12)  # it is streaming
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 10)

    assert proc.returncode == 130, err.decode()
    run_id = started_run_id(err.decode())
    assert f"martlet-molt attach {run_id}" in err.decode()
    assert "Cancel the run" not in err.decode()
    run = await wait_final(gateway.url, run_id)
    assert (run["status"], run["content"]) == ("completed", reply.text)


async def test_ctrl_c_in_a_terminal_asks_and_cancels(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, token_count=100, token_text="t{i} ", delay=0.05)
    gateway = make_gateway()
    master, slave = pty.openpty()
    try:
        async with spawn(gateway.url, "chat", "hi", stdin=slave) as proc:
            assert proc.stdout is not None
            assert proc.stderr is not None
            await asyncio.wait_for(proc.stdout.read(1), 12)
            proc.send_signal(signal.SIGINT)
            prompt = await asyncio.wait_for(proc.stderr.readuntil(b"[l] "), 5)
            assert b"Cancel the run (c) or leave it running in the background (l)?" in prompt
            os.write(master, b"c\n")
            _, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        os.close(master)
        os.close(slave)

    run_id = started_run_id(prompt.decode())
    assert proc.returncode == 1, err.decode()
    assert f"run {run_id} cancelled" in err.decode()
    assert (await wait_final(gateway.url, run_id))["status"] == "cancelled"


# --------------------------------------------------------------------------- tool calls


async def test_chat_prints_one_line_per_tool_call(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(tools="calculator")
    upstream.scripts_by_model.pop(model, None)  # the queue below serves this test
    calls = Script(
        tool_calls=[
            {"name": "calculator", "arguments": {"expression": "6*7"}},
            {"name": "calculator", "arguments": {"expression": "1/0"}},
        ]
    )
    upstream.enqueue(calls, Script(tokens=["It is ", "42."]))

    code, out, err = await run_cli(gateway.url, "chat", "what is 6*7?")

    assert code == 0, err
    assert out == "It is 42."  # stdout keeps only the reply
    lines = [line for line in err.splitlines() if line.startswith("🔧")]
    # The duration is there once results carry `duration_ms`.
    assert [DURATION.sub("", line) for line in lines] == [
        "🔧 calculator(6*7) → 42",
        "🔧 calculator(1/0) failed: division by zero",
    ]


async def test_tool_results_in_any_order_each_on_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Calls of one round finish in any order; each result prints its own call, cut to the
    terminal's width with its duration kept."""
    width = 60
    stderr = io.StringIO()
    console = Console(file=stderr, width=width, soft_wrap=True, highlight=False, emoji=False)
    monkeypatch.setattr(terminal, "err", console)
    long_args = json.dumps({"q": "x" * 200, "limit": 3})
    events = [
        StreamEvent(
            1, "tool_call", {"id": "a", "name": "calculator", "arguments": '{"expression": "6*7"}'}
        ),
        StreamEvent(2, "tool_call", {"id": "b", "name": "search", "arguments": long_args}),
        StreamEvent(3, "tool_call", {"id": "c", "name": "fetch", "arguments": "{}"}),
        StreamEvent(
            4,
            "tool_result",
            {
                "tool_call_id": "b",
                "name": "search",
                "content": "found\n" * 100,
                "status": "done",
                "duration_ms": 1234,
            },
        ),
        StreamEvent(
            5,
            "tool_result",
            {
                "tool_call_id": "c",
                "name": "fetch",
                "content": "error: offline",
                "status": "failed",
                "duration_ms": 7,
            },
        ),
        StreamEvent(
            6,
            "tool_result",
            {
                "tool_call_id": "a",
                "name": "calculator",
                "content": "42",
                "status": "done",
                "duration_ms": 412,
            },
        ),
        # As after `attach --after`: a result whose call was not seen.
        StreamEvent(7, "tool_result", {"tool_call_id": "d", "name": "clock", "content": "noon"}),
        StreamEvent(8, "done", {"status": "completed"}),
    ]

    async def stream() -> AsyncIterator[StreamEvent]:
        for event in events:
            yield event

    progress = terminal._Progress("http://127.0.0.1:9", None)  # pyright: ignore[reportPrivateUsage]
    await terminal._render(stream(), terminal.OutputFormat.TEXT, progress)  # pyright: ignore[reportPrivateUsage]

    lines = stderr.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("🔧 search(q=xxx")
    assert "…) → found found" in lines[0]
    assert lines[0].endswith("…  (1.2 s)")
    assert cell_len(lines[0]) == width
    assert lines[1:] == [
        "🔧 fetch() failed: offline  (7 ms)",
        "🔧 calculator(6*7) → 42  (0.4 s)",
        "🔧 clock → noon",
    ]
    assert progress.tool_calls == {}
    assert progress.end == {"status": "completed"}


# --------------------------------------------------------------------------- attach


async def test_attach_follows_a_running_run(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    reply = script(upstream, model, token_count=40, token_text="a{i} ", delay=0.06)
    gateway = make_gateway()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=5) as client:
        first = await read_sse(
            client, "POST", "/chat/stream", json_body={"message": "hi"}, stop_after=2
        )
    run_id = first.headers["x-run-id"]

    attached = await asyncio.to_thread(invoke, "attach", run_id, MARTLET_URL=gateway.url)

    assert attached.exit_code == 0, attached.stderr
    assert attached.stdout == reply.text
    assert f"run {run_id} (streaming)" in attached.stderr  # it joined while the run was going
    assert f"run {run_id} completed" in attached.stderr

    rest = await asyncio.to_thread(
        invoke, "attach", run_id, "-f", "json", "--after", "38", MARTLET_URL=gateway.url
    )
    assert rest.exit_code == 0, rest.stderr
    assert [json.loads(line)["seq"] for line in rest.stdout.splitlines()] == [39, 40, 41]


# --------------------------------------------------------------------------- history


async def test_sessions_and_runs_show(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    reply = script(upstream, model, tokens=["The answer", " is 42."])
    gateway = make_gateway()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=5) as client:
        answer = await client.post("/chat", json={"message": "6 x 7?", "session_id": "hist"})
    run_id = answer.json()["run_id"]

    listing, history, run = await asyncio.to_thread(
        lambda: (
            invoke("sessions", MARTLET_URL=gateway.url),
            invoke("sessions", "hist", MARTLET_URL=gateway.url),
            invoke("runs", "show", run_id, "--url", gateway.url),
        )
    )

    assert listing.exit_code == 0, listing.output
    assert "hist" in listing.stdout
    assert history.exit_code == 0, history.output
    assert "6 x 7?" in history.stdout
    assert reply.text in history.stdout
    assert run_id in history.stdout
    assert run.exit_code == 0, run.output
    assert run_id in run.stdout
    assert "completed" in run.stdout
    assert reply.text in run.stdout
    assert "total_tokens" in run.stdout


async def test_errors_print_the_gateways_message(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(api_keys="sekret-key")

    missing, unauthorized, refused = await asyncio.to_thread(
        lambda: (
            invoke(
                "runs", "show", "run_nope", MARTLET_URL=gateway.url, MARTLET_API_KEY="sekret-key"
            ),
            invoke("sessions", MARTLET_URL=gateway.url),
            invoke("sessions", "--url", "http://127.0.0.1:9"),
        )
    )

    assert missing.exit_code == 2
    assert "run_nope" in missing.stderr
    assert "Traceback" not in missing.output
    assert unauthorized.exit_code == 2, unauthorized.output
    assert "API key" in unauthorized.stderr  # the gateway's own words
    assert refused.exit_code == 2
    assert "127.0.0.1:9" in refused.stderr


# --------------------------------------------------------------------------- the library


async def collect(events: Any, proxy: CuttableProxy) -> list[StreamEvent]:
    """Read events, cutting the network once after the third delta."""
    seen: list[StreamEvent] = []
    async for event in events:
        seen.append(event)
        if len(seen) == 3:
            proxy.cut()
    return seen


def assert_whole(events: list[StreamEvent], text: str) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert "".join(e.text for e in events) == text
    assert events[-1].kind == "done"
    assert events[-1].data["status"] == "completed"


async def test_follow_resumes_after_a_cut(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    reply = script(upstream, model, token_count=30, delay=0.02)
    async with GatewayClient(gateway.url) as direct:
        started = await direct.start_stream("hi")
        await anext(started.events)
        await started.events.aclose()

    async with CuttableProxy(gateway.port) as proxy, GatewayClient(proxy.url) as client:
        events = await collect(client.follow(started.run_id), proxy)

    assert_whole(events, reply.text)
    assert len(proxy.stream_links) >= 2


async def test_start_stream_resumes_after_a_cut(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    reply = script(upstream, model, token_count=30, delay=0.02)
    async with CuttableProxy(gateway.port) as proxy, GatewayClient(proxy.url) as client:
        started = await client.start_stream("hi", "lib-session")
        events = await collect(started.events, proxy)

    assert started.session_id == "lib-session"
    assert_whole(events, reply.text)
    assert [link.request[:4] for link in proxy.stream_links[:2]] == [b"POST", b"GET "]


async def test_follow_gives_up_after_bounded_retries(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, token_count=10, delay=0.05)
    async with CuttableProxy(gateway.port) as proxy:
        client = GatewayClient(proxy.url, max_attempts=3, backoff=(0.01, 0.05))
        started = await client.start_stream("hi")
        seen = [await anext(started.events)]
        proxy.stop_accepting()
        proxy.cut()
        with pytest.raises(ConnectionLost) as lost:
            seen.extend([event async for event in started.events])
        await client.aclose()

    assert lost.value.run_id == started.run_id
    assert lost.value.last_seq == seen[-1].seq
