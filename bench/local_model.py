"""`python -m bench.local_model [--parallel 1] [--threads N] [--context 2048]`: the gateway's
local model (`LocalModelServer`, packaged SmolLM2 unless `--model` names a GGUF) as a
standalone process, so a benchmark can call it directly and through a gateway.

`LocalModelServer` picks its own free loopback port; once the model is loaded this prints
`READY <base_url> <model_name>`. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from martlet_molt.providers.local import (
    LocalModelConfig,
    LocalModelServer,
    default_threads,
    resolve_model_path,
)


def main(argv: list[str] | None = None) -> None:
    """Load the model, serve it until told to stop."""
    parser = argparse.ArgumentParser(prog="python -m bench.local_model")
    parser.add_argument("--model", default=None, help="a GGUF file (default: packaged SmolLM2)")
    parser.add_argument("--threads", type=int, default=0, help="default: every CPU")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--context", type=int, default=2048)
    opts = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    config = LocalModelConfig(
        path=resolve_model_path(opts.model),
        threads=opts.threads or default_threads(),
        parallel=opts.parallel,
        context=opts.context,
    )
    server = LocalModelServer(config)
    server.start()
    print(f"READY {server.base_url} {server.model_name}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
