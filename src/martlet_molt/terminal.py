"""The terminal client: `martlet-molt chat`, `attach` and `runs`, over `client.py`
(`sessions` is in `session_commands.py`).

Output: the reply goes to stdout (rich Markdown when stdout is a terminal, else the exact text,
flushed as it streams, so it pipes cleanly; `--format json`: one JSON object per event). Ids,
tool activity, statuses and errors go to stderr.

Exit codes: 0 the run completed; 1 it failed, was cancelled or interrupted, or its stream was lost;
2 a usage error or an error answer from the gateway (its message is printed); 130 Ctrl-C left
the run going in the background. On Ctrl-C a terminal is asked whether to cancel the run; when
stdin is not a terminal nothing is asked and the run is left running.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.markup import escape
from rich.text import Text

from martlet_molt.client import ApiError, ConnectionLost, GatewayClient, GatewayError, StreamEvent

DEFAULT_URL = "http://127.0.0.1:8001"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LEFT_RUNNING = 0, 1, 2, 130
PROMPT = "Cancel the run (c) or leave it running in the background (l)?"

T = TypeVar("T")

err = Console(stderr=True, soft_wrap=True, highlight=False, emoji=False)


class OutputFormat(StrEnum):
    """How `chat` and `attach` print a reply."""

    TEXT = "text"
    JSON = "json"


Url = Annotated[str, typer.Option("--url", envvar="MARTLET_URL", help="The gateway's root URL.")]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar="MARTLET_API_KEY", help="Sent as a bearer token.", show_default=False
    ),
]
Format = Annotated[
    OutputFormat,
    typer.Option("--format", "-f", help="text: the reply; json: one JSON line per event."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the gateway's JSON answer.")]


@dataclass
class _Progress:
    """What a streaming command knows, for the Ctrl-C handler and the final report."""

    url: str
    api_key: str | None
    run_id: str | None = None
    end: dict[str, Any] | None = None
    open_line: bool = False
    """The plain text printed so far does not end with a line break."""
    tool_calls: dict[str, tuple[str, str]] = field(default_factory=dict[str, tuple[str, str]])
    """The calls without a result yet, by id: (name, arguments). Calls of one round may
    finish in any order, so each result finds its own call here."""


def stdout_console() -> Console:
    """Where results go (stderr gets the rest)."""
    return Console(highlight=False, soft_wrap=True, emoji=False)


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def call_gateway(make: Callable[[GatewayClient], Awaitable[T]], url: str, api_key: str | None) -> T:
    """Run one client call; gateway errors become a message and exit code 2."""

    async def go() -> T:
        async with GatewayClient(url, api_key) as client:
            return await make(client)

    try:
        return asyncio.run(go())
    except ApiError as exc:
        raise _fail(exc.message, EXIT_USAGE) from None
    except GatewayError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None


async def _render(
    events: AsyncIterator[StreamEvent], fmt: OutputFormat, progress: _Progress
) -> None:
    """Print a run's events as they come; remember the `done` event."""
    tty_markdown = fmt is OutputFormat.TEXT and sys.stdout.isatty()
    text = ""
    live = Live(
        Markdown(""), console=stdout_console(), refresh_per_second=12, vertical_overflow="visible"
    )
    if tty_markdown:
        live.start()
    try:
        async for event in events:
            if fmt is OutputFormat.JSON:
                line = {"seq": event.seq, "event": event.kind, "data": event.data}
                sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
                sys.stdout.flush()
            elif event.kind == "delta":
                text += event.text
                if tty_markdown:
                    live.update(Markdown(text))
                elif event.text:
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                    progress.open_line = not event.text.endswith(("\n", "\r"))
            elif event.kind == "tool_call":
                call_id = str(event.data.get("id"))
                progress.tool_calls[call_id] = (
                    str(event.data.get("name")),
                    str(event.data.get("arguments") or ""),
                )
            elif event.kind == "tool_result":
                _print_tool_result(event.data, progress)
            elif event.kind == "error":
                err.print(f"[red]error:[/red] {escape(str(event.data.get('message')))}")
            if event.kind == "done":
                progress.end = event.data
    finally:
        if tty_markdown:
            live.stop()


def _short_arguments(arguments: str) -> str:
    """The arguments as the chat page's summary shows them: a lone value as is (`6*7` for
    `{"expression": "6*7"}`), else `key=value` pairs; anything not a JSON object verbatim."""
    try:
        parsed: Any = json.loads(arguments)
    except ValueError:
        return arguments
    if not isinstance(parsed, dict):
        return arguments
    values: dict[str, Any] = parsed  # pyright: ignore[reportUnknownVariableType]

    def show(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    if len(values) == 1:
        return show(next(iter(values.values())))
    return ", ".join(f"{key}={show(value)}" for key, value in values.items())


def _duration(duration_ms: Any) -> str:
    """'0.4 s', or '12 ms' under a tenth of a second; '' when unknown (older events)."""
    if isinstance(duration_ms, bool) or not isinstance(duration_ms, int | float) or duration_ms < 0:
        return ""
    return f"{round(duration_ms)} ms" if duration_ms < 100 else f"{duration_ms / 1000:.1f} s"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _tool_line(name: str, arguments: str | None, result: dict[str, Any], width: int) -> Text:
    """One call, finished, in at most `width` cells: `🔧 name(args) → result  (0.4 s)`, or
    `… failed: reason`. Results carry `status` ("done" | "failed") and `duration_ms`; older
    ones do not, and a failure is then the tool's `error: ...` text."""
    content = str(result.get("content") or "")
    status = result.get("status")
    failed = status == "failed" or (status != "done" and content.startswith("error:"))
    duration = _duration(result.get("duration_ms"))
    suffix = f"  ({duration})" if duration else ""
    width = max(width, 20)
    call = f"🔧 {name}"
    if arguments is not None:
        # The arguments get at most a third of the line, so the result stays in sight.
        args = Text(_one_line(_short_arguments(arguments)))
        args.truncate(max(8, width // 3), overflow="ellipsis")
        call += f"({args.plain})"
    outcome = f"failed: {content.removeprefix('error:').strip()}" if failed else f"→ {content}"
    line = Text(f"{call} {_one_line(outcome)}", style="red" if failed else "dim")
    line.truncate(max(8, width - len(suffix)), overflow="ellipsis")
    line.append(suffix)
    return line


def _print_tool_result(data: dict[str, Any], progress: _Progress) -> None:
    """One line per call, when its result comes (a call still running shows nothing)."""
    call = progress.tool_calls.pop(str(data.get("tool_call_id")), None)
    # With `attach --after`, a result may come without its call: its name is in it too.
    name, arguments = call if call is not None else (str(data.get("name") or "tool"), None)
    err.print(_tool_line(name, arguments, data, err.width))


def _usage_note(usage: Any) -> str:
    if isinstance(usage, dict) and "total_tokens" in usage:
        return f" · {usage['total_tokens']} tokens"
    return ""


def attach_hint(run_id: str) -> str:
    """The command that picks a run up again."""
    return f"follow it with: martlet-molt attach {run_id}"


def _ask_cancel() -> bool:
    """Ask a terminal whether to cancel; anything but `c` (or no answer) leaves it running.
    The prompt goes to stderr and the answer is read from stdin, so stdout keeps only the
    reply."""
    if not (sys.stdin and sys.stdin.isatty()):
        return False
    err.print(f"{PROMPT} [l] ", end="", markup=False)
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        err.print()
        return False
    return answer.strip().lower() in {"c", "cancel"}


def _interrupted(progress: _Progress) -> int:
    """Ctrl-C: cancel the run, or leave it running and say how to come back."""
    err.print()
    run_id = progress.run_id
    if run_id is None:
        err.print("interrupted before the run started")
        return EXIT_LEFT_RUNNING
    if not _ask_cancel():
        err.print(f"left run {run_id} running in the background; {attach_hint(run_id)}")
        return EXIT_LEFT_RUNNING
    run = call_gateway(lambda client: client.cancel(run_id), progress.url, progress.api_key)
    err.print(f"run {run_id} {run['status']}")
    return EXIT_OK if run["status"] == "completed" else EXIT_FAILED


def _stream(progress: _Progress, body: Callable[[GatewayClient], Awaitable[None]]) -> None:
    """Run a streaming command to its end, Ctrl-C or error, and exit with the right code."""

    async def go() -> None:
        async with GatewayClient(progress.url, progress.api_key) as client:
            await body(client)

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        raise typer.Exit(_interrupted(progress)) from None
    except ConnectionLost as exc:
        hint = attach_hint(exc.run_id)
        err.print(f"[red]error:[/red] {escape(str(exc))}; the run may still be going; {hint}")
        raise typer.Exit(EXIT_FAILED) from None
    except ApiError as exc:
        raise _fail(exc.message, EXIT_USAGE) from None
    except GatewayError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    end = progress.end or {}
    status = end.get("status")
    note = f": {escape(str(end['error']))}" if end.get("error") else ""
    if sys.stdout.isatty() or progress.open_line:
        err.print()  # stdout keeps the exact reply; the status goes on a line of its own
    err.print(f"run {progress.run_id} {status}{note}{_usage_note(end.get('usage'))}")
    raise typer.Exit(EXIT_OK if status == "completed" else EXIT_FAILED)


def chat(
    message: Annotated[str, typer.Argument(help="What to say.")],
    session: Annotated[
        str | None, typer.Option("--session", "-s", help="Continue this session (default: new).")
    ] = None,
    fmt: Format = OutputFormat.TEXT,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Send a message and stream the reply; reconnects by itself if the network drops."""
    progress = _Progress(url, api_key)

    async def body(client: GatewayClient) -> None:
        model = (await client.health()).get("model") or "no model"
        started = await client.start_stream(message, session)
        progress.run_id = started.run_id
        err.print(f"session {started.session_id} · run {started.run_id} · {model}")
        await _render(started.events, fmt, progress)

    _stream(progress, body)


def attach(
    run_id: Annotated[str, typer.Argument(help="The run to follow.")],
    fmt: Format = OutputFormat.TEXT,
    after: Annotated[int, typer.Option(help="Skip the events up to this seq.", min=0)] = 0,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Follow a run (running or finished): its reply so far, then live to its end."""
    progress = _Progress(url, api_key, run_id=run_id)

    async def body(client: GatewayClient) -> None:
        run = await client.get_run(run_id)
        err.print(f"session {run['session_id']} · run {run_id} ({run['status']})")
        await _render(client.follow(run_id, after), fmt, progress)

    _stream(progress, body)


runs = typer.Typer(help="Inspect and cancel runs.", no_args_is_help=True)


@runs.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """A run's status, usage and reply so far."""
    run = call_gateway(lambda client: client.get_run(run_id), url, api_key)
    if as_json:
        return typer.echo(json.dumps(run, ensure_ascii=False, indent=2))
    out = stdout_console()
    for key in ("run_id", "session_id", "status", "error", "created_at", "completed_at"):
        if run.get(key):
            out.print(f"{key:<14}{escape(str(run[key]))}")
    if run.get("usage"):
        out.print(f"{'usage':<14}{escape(json.dumps(run['usage']))}")
    out.print()
    out.print(escape(run["content"]))


@runs.command("cancel")
def runs_cancel(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Cancel a run (its partial reply is kept); prints its final status."""
    run = call_gateway(lambda client: client.cancel(run_id), url, api_key)
    typer.echo(f"run {run_id} {run['status']}")


def register(cli: typer.Typer) -> None:
    """Add the client commands to the `martlet-molt` app."""
    cli.command()(chat)
    cli.command()(attach)
    cli.add_typer(runs, name="runs")
