"""`python -m bench.upstream`: the fake upstream (`python -m martlet_molt.testing`), plus one
option the benchmarks need: `--stamp`.

With `--stamp` every chunk's text is `<index>@<monotonic_ns> `, made at the moment the upstream
sends it, so a reader on this machine knows exactly how long each token took to reach it
(CLOCK_MONOTONIC is shared by all processes). Without it, this is `martlet_molt.testing` as is.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, SupportsIndex, overload

from martlet_molt.testing import READY, FakeUpstream, Script
from martlet_molt.testing import main as fake_upstream_main


class _StampedDeltas(list[dict[str, Any]]):
    """`count` deltas whose text is made when the upstream reads them, just before sending."""

    def __init__(self, count: int) -> None:
        super().__init__([{}] * count)

    @overload
    def __getitem__(self, index: SupportsIndex) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index: SupportsIndex | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return {"content": f"{int(index)}@{time.monotonic_ns()} "}


class StampedScript(Script):
    """A script whose chunks carry the time they were sent."""

    @property
    def deltas(self) -> list[dict[str, Any]]:
        """Lazily stamped text deltas (no tool calls)."""
        return _StampedDeltas(self.token_count or 0)


def main(argv: list[str] | None = None) -> None:
    """Serve the fake upstream; `--stamp` makes every chunk carry its send time."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--stamp" not in args:
        fake_upstream_main(args)
        return
    args.remove("--stamp")
    parser = argparse.ArgumentParser(description="Fake upstream with time-stamped chunks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--first-delay", type=float, default=0.0)
    parser.add_argument("--max-records", type=int, default=1000)
    opts = parser.parse_args(args)
    script = StampedScript(token_count=opts.tokens, delay=opts.delay, first_delay=opts.first_delay)
    upstream = FakeUpstream(
        host=opts.host, port=opts.port, default_script=script, max_records=opts.max_records
    )
    upstream.serve_forever(lambda url: print(f"{READY} {url}", flush=True))


if __name__ == "__main__":
    main()
