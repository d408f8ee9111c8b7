"""`python -m bench.local_replies [--config before|after|both]`: do the local model's replies
end by themselves?

Asks the packaged SmolLM2 the fixed prompts of `bench/local_prompts.json` through a real
gateway process (`POST /v1/chat/completions`, one new conversation per prompt, one at a time)
and reports, per configuration:

- replies that end by themselves: `finish_reason` is `stop` (a reply cut at the token cap
  ends with `length`);
- the median reply length in completion tokens (the model's usage) and in characters;
- replies with a loop: some 8 consecutive words (lower-cased, punctuation around each word
  dropped) occur 3 times or more.

Configurations: `before` is llama.cpp's own sampling with no cap of the gateway's, bounded here
at 2,048 tokens so it ends (a reply cut there did not end by itself); `after` is what the
gateway runs by default now (`SMALL_MODEL_SAMPLING`, the `MARTLET_LOCAL_MAX_TOKENS` default).

The model server is `LocalModelServer` in this process, one slot, with a fixed sampling seed so
reruns ask the same questions the same way; the gateway (`python -m martlet_molt serve`, SQLite
in a temporary directory) reaches it as its OpenAI upstream, sending it exactly the requests
its local provider sends. Results go to `bench/results/local_replies-<time>.json`, and the
table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from martlet_molt.config import DEFAULT_LOCAL_MAX_TOKENS, Settings
from martlet_molt.providers.local import (
    SMALL_MODEL_SAMPLING,
    LocalModelConfig,
    LocalModelServer,
    Sampling,
    default_threads,
    resolve_model_path,
)

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = Path(__file__).resolve().parent / "local_prompts.json"
BEFORE_CAP = 2048
SEED = 42
LOOP_WORDS = 8
LOOP_TIMES = 3
STARTUP_TIMEOUT = 60.0
REPLY_TIMEOUT = 900.0
_ENV_PREFIXES = ("MARTLET_", "OPENAI_")
_EDGE_PUNCTUATION = re.compile(r"^\W+|\W+$")


@dataclass(frozen=True, slots=True)
class Configuration:
    """One way of running the local model: its sampling defaults and its reply cap."""

    name: str
    sampling: Sampling
    max_tokens: int
    about: str


def configurations(seed: int) -> dict[str, Configuration]:
    """Before and after, both with the same fixed seed."""
    before = Configuration(
        "before",
        Sampling(seed=seed),
        BEFORE_CAP,
        f"llama.cpp's sampling defaults; no cap (bounded at {BEFORE_CAP} tokens here)",
    )
    after_sampling = Sampling(**{**asdict(SMALL_MODEL_SAMPLING), "seed": seed})
    after = Configuration(
        "after",
        after_sampling,
        DEFAULT_LOCAL_MAX_TOKENS,
        "the gateway's defaults: SMALL_MODEL_SAMPLING and the local reply cap",
    )
    return {"before": before, "after": after}


@dataclass(frozen=True, slots=True)
class Reply:
    """One prompt's answer and what it says about the model's ending."""

    kind: str
    prompt: str
    finish_reason: str
    completion_tokens: int
    chars: int
    loop: bool
    seconds: float
    text: str


def has_loop(text: str, words: int = LOOP_WORDS, times: int = LOOP_TIMES) -> bool:
    """Whether some `words` consecutive words occur `times` times or more (overlaps count)."""
    tokens = [_EDGE_PUNCTUATION.sub("", word.lower()) for word in text.split()]
    tokens = [token for token in tokens if token]
    grams = Counter(tuple(tokens[i : i + words]) for i in range(len(tokens) - words + 1))
    return bool(grams) and max(grams.values()) >= times


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def model_server(config: Configuration, threads: int) -> Iterator[LocalModelServer]:
    """The packaged model on a loopback port with this configuration's sampling."""
    server = LocalModelServer(
        LocalModelConfig(
            path=resolve_model_path(None),
            threads=threads,
            parallel=1,
            context=Settings.model_fields["local_context"].default,
            sampling=config.sampling,
        )
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def gateway(server: LocalModelServer, max_tokens: int, directory: Path) -> Iterator[str]:
    """A gateway process whose upstream is `server`; yields its base URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "OPENAI_BASE_URL": server.base_url,
            "MARTLET_MODEL": server.model_name,
            "MARTLET_MAX_TOKENS": str(max_tokens),
            "MARTLET_DATABASE_URL": f"sqlite:///{directory / 'martlet.db'}",
            "MARTLET_UPSTREAM_IDLE_TIMEOUT_SECONDS": str(REPLY_TIMEOUT),
        }
    )
    log = (directory / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "martlet_molt", "serve", "--port", str(port)],
        env=env,
        cwd=directory,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited; see {directory / 'gateway.log'}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not answer /healthz in time")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def ask(client: httpx.Client, model: str, kind: str, prompt: str) -> Reply:
    """One prompt in a new conversation, answered in full."""
    started = time.monotonic()
    response = client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": prompt}]},
    )
    seconds = time.monotonic() - started
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    choice: dict[str, Any] = body["choices"][0]
    text = str(choice["message"]["content"] or "")
    return Reply(
        kind=kind,
        prompt=prompt,
        finish_reason=str(choice["finish_reason"]),
        completion_tokens=int(body["usage"]["completion_tokens"]),
        chars=len(text),
        loop=has_loop(text),
        seconds=round(seconds, 2),
        text=text,
    )


def run(config: Configuration, prompts: Sequence[dict[str, str]], threads: int) -> list[Reply]:
    """Every prompt through a fresh gateway and model server of this configuration."""
    replies: list[Reply] = []
    with (
        tempfile.TemporaryDirectory(prefix="local-replies-") as tmp,
        model_server(config, threads) as server,
        gateway(server, config.max_tokens, Path(tmp)) as url,
        httpx.Client(base_url=url, timeout=REPLY_TIMEOUT) as client,
    ):
        for number, prompt in enumerate(prompts, 1):
            reply = ask(client, server.model_name, prompt["kind"], prompt["text"])
            replies.append(reply)
            print(
                f"{config.name} {number}/{len(prompts)}: {reply.finish_reason}, "
                f"{reply.completion_tokens} tokens, loop {reply.loop}, {reply.seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    return replies


def summary(replies: Sequence[Reply]) -> dict[str, float]:
    """The figures of one configuration."""
    count = len(replies)
    return {
        "replies": count,
        "ended": sum(reply.finish_reason == "stop" for reply in replies),
        "cut": sum(reply.finish_reason == "length" for reply in replies),
        "loops": sum(reply.loop for reply in replies),
        "median_tokens": statistics.median(reply.completion_tokens for reply in replies),
        "median_chars": statistics.median(reply.chars for reply in replies),
        "median_seconds": statistics.median(reply.seconds for reply in replies),
        "max_seconds": max(reply.seconds for reply in replies),
        "total_seconds": sum(reply.seconds for reply in replies),
    }


def table(summaries: dict[str, dict[str, float]], caps: dict[str, int]) -> str:
    """A Markdown table, one column per configuration."""
    names = list(summaries)

    def share(value: float, count: float) -> str:
        return f"{value:.0f} / {count:.0f} ({100 * value / count:.0f} %)"

    rows = [
        ("replies that end by themselves (`finish_reason: stop`)", "ended", share),
        ("replies cut at the cap (`length`)", "cut", share),
        (f"replies with a loop ({LOOP_WORDS} words {LOOP_TIMES}+ times)", "loops", share),
    ]
    lines = [
        "| | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
        "| reply cap (tokens) | " + " | ".join(f"{caps[n]:,}" for n in names) + " |",
    ]
    for label, key, render in rows:
        cells = [render(summaries[n][key], summaries[n]["replies"]) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    numbers = [
        ("median reply, completion tokens", "median_tokens", "{:,.0f}"),
        ("median reply, characters", "median_chars", "{:,.0f}"),
        ("median time per reply", "median_seconds", "{:.1f} s"),
        ("longest time for a reply", "max_seconds", "{:.1f} s"),
        ("time for all replies", "total_seconds", "{:.0f} s"),
    ]
    for label, key, fmt in numbers:
        cells = [fmt.format(summaries[n][key]) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the chosen configurations, save every reply, print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.local_replies")
    parser.add_argument("--config", choices=["before", "after", "both"], default="both")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--threads", type=int, default=0, help="default: every CPU")
    parser.add_argument("--prompts", type=Path, default=PROMPTS)
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    opts = parser.parse_args(argv)
    prompts: list[dict[str, str]] = json.loads(opts.prompts.read_text())["prompts"]
    known = configurations(opts.seed)
    chosen = ["before", "after"] if opts.config == "both" else [opts.config]
    threads = opts.threads or default_threads()
    results: dict[str, Any] = {"seed": opts.seed, "threads": threads, "configurations": {}}
    summaries: dict[str, dict[str, float]] = {}
    for name in chosen:
        config = known[name]
        replies = run(config, prompts, threads)
        summaries[name] = summary(replies)
        results["configurations"][name] = {
            "about": config.about,
            "sampling": asdict(config.sampling),
            "max_tokens": config.max_tokens,
            "summary": summaries[name],
            "replies": [asdict(reply) for reply in replies],
        }
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    path = opts.results_dir / f"local_replies-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    print(table(summaries, {name: known[name].max_tokens for name in chosen}))
    print(f"\nevery reply: {path}")


if __name__ == "__main__":
    main()
