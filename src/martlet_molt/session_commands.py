"""`martlet-molt sessions`: the chats a principal has, by the titles every client shows; find
one by its words, read it, rename it, take it away as a file.

    martlet-molt sessions [list] [--limit N] [--offset N] [--json]
    martlet-molt sessions search WORDS… [--limit N] [--json]
    martlet-molt sessions [show] ID [--json]
    martlet-molt sessions rename ID TITLE
    martlet-molt sessions export ID [--format markdown|json] [-o FILE|FOLDER]

`sessions` alone lists and `sessions ID` shows, as before the subcommands existed. Results go
to stdout (an export's bytes exactly, so it pipes), messages to stderr; an error answer from
the gateway exits with 2 and its message.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from martlet_molt.terminal import (
    DEFAULT_URL,
    ApiKey,
    AsJson,
    Url,
    attach_hint,
    call_gateway,
    err,
    stdout_console,
)


class _SessionsGroup(TyperGroup):
    """`sessions` and `sessions --limit 5` list; `sessions ID` shows that session."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # Typer's own click Context
        """Name the implied subcommand before click looks for one."""
        if not args or (args[0].startswith("-") and args[0] != "--help"):
            args = ["list", *args]
        elif not args[0].startswith("-") and args[0] not in self.commands:
            args = ["show", *args]
        return super().parse_args(ctx, args)


sessions = typer.Typer(
    cls=_SessionsGroup,
    help="List, find, read, rename and export chats (`sessions ID` shows one).",
)

Limit = Annotated[int, typer.Option(help="How many sessions to list.", min=1, max=200)]
Offset = Annotated[int, typer.Option(help="Skip this many sessions.", min=0)]
SessionArg = Annotated[str, typer.Argument(help="The session's id.")]


class ExportFormat(StrEnum):
    """What file `export` writes."""

    MARKDOWN = "markdown"
    JSON = "json"


def _when(value: Any) -> str:
    return str(value or "")[:19].replace("T", " ")


def _id_width(sessions: list[dict[str, Any]]) -> int:
    """Room for whole session ids: they are what the other commands take."""
    return min(40, max((len(s["session_id"]) for s in sessions), default=7))


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, ensure_ascii=False, indent=2))


@sessions.command("list")
def list_sessions(
    limit: Limit = 20,
    offset: Offset = 0,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """List chats by title, most recently active first."""
    page = call_gateway(lambda client: client.list_sessions(limit, offset), url, api_key)
    if as_json:
        return _print_json(page)
    table = Table(title=f"{page['total']} session(s)")
    table.add_column("session", min_width=_id_width(page["sessions"]), overflow="fold")
    table.add_column("title")
    table.add_column("updated", no_wrap=True)
    table.add_column("active run", overflow="fold")
    for item in page["sessions"]:
        table.add_row(
            item["session_id"],
            Text(item["title"] or ""),
            _when(item["updated_at"]),
            item["active_run_id"] or "",
        )
    stdout_console().print(table)


@sessions.command("search")
def search_sessions(
    words: Annotated[list[str], typer.Argument(help="Words the chat holds (each a prefix).")],
    limit: Limit = 20,
    offset: Offset = 0,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Find chats whose title or messages hold every word, best match first."""
    query = " ".join(words)
    page = call_gateway(lambda client: client.list_sessions(limit, offset, query), url, api_key)
    if as_json:
        return _print_json(page)
    table = Table(title=f"{page['total']} found")
    table.add_column("session", min_width=_id_width(page["sessions"]), overflow="fold")
    table.add_column("title")
    table.add_column("match")
    for hit in page["sessions"]:
        passage = Text(hit["snippet"])
        for start, end in hit["highlights"]:
            passage.stylize("bold yellow", start, end)
        table.add_row(hit["session_id"], Text(hit["title"] or ""), passage)
    stdout_console().print(table)


@sessions.command("show")
def show_session(
    session_id: SessionArg,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Print a chat's whole history."""
    detail = call_gateway(lambda client: client.get_session(session_id), url, api_key)
    if as_json:
        return _print_json(detail)
    out = stdout_console()
    heading = f"session {detail['session_id']}"
    if detail.get("title"):
        heading += f" · {detail['title']}"
    out.print(f"[bold]{escape(heading)}[/bold]")
    active = detail.get("active_run_id")
    if active:
        out.print(f"active run {active}; {attach_hint(active)}")
    for message in detail["messages"]:
        role = message["role"]
        label = f"tool {message.get('name') or ''}".strip() if role == "tool" else role
        extras = [message["run_id"]] if role == "assistant" and message.get("run_id") else []
        if message["status"] != "completed":
            extras.append(message["status"])
        header = " · ".join([label, _when(message["created_at"]), *extras])
        out.print(f"\n[bold cyan]{escape(header)}[/bold cyan]")
        calls: list[dict[str, Any]] = message.get("tool_calls") or []
        for call in calls:
            function: dict[str, Any] = call.get("function") or {}
            out.print(escape(f"→ {function.get('name')}({function.get('arguments')})"))
        if message["content"]:
            out.print(escape(message["content"]))


@sessions.command("rename")
def rename_session(
    session_id: SessionArg,
    title: Annotated[str, typer.Argument(help="The new title (one line, up to 200 characters).")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Give a chat the title every client lists it by."""
    renamed = call_gateway(lambda client: client.rename_session(session_id, title), url, api_key)
    typer.echo(f"{renamed['session_id']}: {renamed['title']}")


@sessions.command("export")
def export_session(
    session_id: SessionArg,
    fmt: Annotated[
        ExportFormat, typer.Option("--format", "-f", help="markdown to read, json for programs.")
    ] = ExportFormat.MARKDOWN,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write to this file, or into this folder under the chat's title "
            "(default: stdout).",
        ),
    ] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Write a whole chat as a file: Markdown (title, every message, tool calls) or JSON."""
    exported = call_gateway(
        lambda client: client.export_session(session_id, fmt.value), url, api_key
    )
    if output is None:
        sys.stdout.buffer.write(exported.content)
        sys.stdout.buffer.flush()
        return
    if output.is_dir():
        output /= (
            exported.filename or f"{session_id}.{'md' if fmt is ExportFormat.MARKDOWN else 'json'}"
        )
    output.write_bytes(exported.content)
    err.print(f"wrote {escape(str(output))} ({len(exported.content)} bytes)")


def register(cli: typer.Typer) -> None:
    """Add `sessions` to the `martlet-molt` app."""
    cli.add_typer(sessions, name="sessions")
