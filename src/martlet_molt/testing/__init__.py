"""A fake OpenAI-compatible upstream: a real HTTP server on loopback speaking OpenAI's exact
chat-completions streaming wire format, with scripted text, tool calls, pace and failures
(errors, stalls, dropped connections, malformed chunks), so a client can be tested against
everything a real model server does, without one.

In tests::

    from martlet_molt.testing import FakeUpstream, Script

    with FakeUpstream() as upstream:
        upstream.enqueue(Script(tokens=["Hel", "lo"], delay=0.01))
        client = AsyncOpenAI(base_url=upstream.base_url, api_key="test")
        ...
        assert upstream.wait_for_completed(1, timeout=5)
        assert upstream.records[0].completed

Standalone (a client in another process, a demo, the benchmarks)::

    python -m martlet_molt.testing --port 8900 --tokens 50 --delay 0.01 --first-delay 0.2
    python -m martlet_molt.testing --scripts demo.json   # replies from a JSON list, in turn

which prints ``FAKE_UPSTREAM_READY http://127.0.0.1:8900/v1`` once it accepts connections
(`--help` lists every option).
"""

from martlet_molt.testing.cli import READY, SHORT_REPLY_TOKENS, main
from martlet_molt.testing.history import RequestHistory, RequestRecord
from martlet_molt.testing.script import Script
from martlet_molt.testing.script_file import ScriptFileError, load_scripts, parse_scripts
from martlet_molt.testing.upstream import FakeUpstream

__all__ = [
    "READY",
    "SHORT_REPLY_TOKENS",
    "FakeUpstream",
    "RequestHistory",
    "RequestRecord",
    "Script",
    "ScriptFileError",
    "load_scripts",
    "main",
    "parse_scripts",
]
