"""`python -m martlet_molt.testing`: the fake upstream as a process of its own, for a
client in another process or language, a demo, or the benchmarks."""

from __future__ import annotations

import argparse

from martlet_molt.testing.script import Script
from martlet_molt.testing.script_file import ScriptFileError, load_scripts
from martlet_molt.testing.upstream import FakeUpstream

READY = "FAKE_UPSTREAM_READY"
"""The first word of the line printed once connections are accepted; the base URL follows."""

SHORT_REPLY_TOKENS = 20
"""Chunks of the short replies `--short-first` serves before the configured ones."""

_EPILOG = f"""\
Once it accepts connections it prints one line, `{READY} <base url>`, e.g.
`{READY} http://127.0.0.1:8900/v1`: point an OpenAI client's base URL there
(any API key). It serves until Ctrl-C or SIGTERM.

examples:
  python -m martlet_molt.testing --port 8900 --tokens 50 --delay 0.01 --first-delay 0.2
  python -m martlet_molt.testing --port 8900 --scripts demo.json

A scripts file is a JSON list of objects whose keys are Script's fields, e.g.
  [{{"tool_calls": [{{"name": "library__find_book",
                     "arguments": {{"title": "The Dispossessed"}}}}]}},
   {{"tokens": ["It is on ", "shelf SF-12."], "delay": 0.05}}]
Requests take them in order, and start over at the first when all were used.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line: where to listen and what every reply is."""
    parser = argparse.ArgumentParser(
        prog="python -m martlet_molt.testing",
        description="A fake OpenAI-compatible chat-completions server: OpenAI's exact\n"
        "streaming wire format, with scripted replies, pace and failures.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host", default="127.0.0.1", metavar="ADDRESS", help="address to listen on"
    )
    parser.add_argument("--port", type=int, default=0, help="0 (the default): a free port")
    parser.add_argument(
        "--scripts",
        metavar="FILE",
        help="answer with the scripts of this JSON file, in turn (see below), instead of "
        "the reply options",
    )
    reply = parser.add_argument_group("reply options (every reply, unless --scripts)")
    reply.add_argument("--tokens", type=int, default=20, metavar="N", help="chunks per reply")
    reply.add_argument("--delay", type=float, default=0.0, metavar="SECONDS", help="between chunks")
    reply.add_argument(
        "--first-delay", type=float, default=0.0, metavar="SECONDS", help="before the first chunk"
    )
    reply.add_argument(
        "--headers-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before the response headers",
    )
    reply.add_argument(
        "--token-text", default="tok{i} ", metavar="TEXT", help='chunk text; "{i}" = its index'
    )
    parser.add_argument(
        "--short-first",
        type=int,
        default=0,
        metavar="N",
        help=f"answer the first N requests with {SHORT_REPLY_TOKENS} default chunks (warm-ups)",
    )
    parser.add_argument(
        "--max-records", type=int, default=1000, metavar="N", help="request records kept in memory"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted; refuse a bad scripts file with a one-line error (status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    rotation: list[Script] = []
    if args.scripts is not None:
        try:
            rotation = load_scripts(args.scripts)
        except ScriptFileError as exc:
            parser.exit(2, f"{parser.prog}: error: {exc}\n")
    script = Script(
        token_count=args.tokens,
        token_text=args.token_text,
        delay=args.delay,
        first_delay=args.first_delay,
        headers_delay=args.headers_delay,
    )
    upstream = FakeUpstream(
        host=args.host, port=args.port, default_script=script, max_records=args.max_records
    )
    upstream.enqueue(*(Script(token_count=SHORT_REPLY_TOKENS) for _ in range(args.short_first)))
    upstream.rotate(rotation)
    upstream.serve_forever(lambda url: print(f"{READY} {url}", flush=True))
