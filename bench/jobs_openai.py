"""Load-client jobs of scenario 10: the same reply read through the native API and OpenAI's two
streaming APIs of one gateway. Every reply is checked whole (every delta, the end marker), so
the timings are those of correct runs."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from bench.httpclient import Mode, Response, request
from bench.jobs import MESSAGE, MODEL, check_saved, direct, gateway, saved_runs, stream

APIS = ("native", "responses", "chat")
"""`POST /chat/stream` (text format), `POST /v1/responses` and `POST /v1/chat/completions`,
all with streaming on."""


async def api_stream(api: str, port: int, **options: Any) -> Response:
    """One streamed reply through `api` of the gateway on `port` (options as for `request`)."""
    if api == "native":
        return await stream(gateway(port), **options)
    if api == "chat":  # the very request a client sends to OpenAI, as the direct baseline does
        return await stream(direct(port), **options)
    if api != "responses":
        raise ValueError(f"unknown API {api}")
    body = {"model": MODEL, "input": MESSAGE, "stream": True}
    return await request(port, "POST", "/v1/responses", mode=Mode.RESPONSES, body=body, **options)


def fault(answer: Response, expected: str, chunks: int) -> str | None:
    """What is wrong with a reply that should be `chunks` deltas making `expected`, if
    anything."""
    if answer.error:
        return answer.error[:120]
    if not answer.done:
        return "no end marker"
    if len(answer.texts) != chunks:
        return f"{len(answer.texts)} deltas, expected {chunks}"
    if answer.text != expected:
        return "text differs from what the upstream sent"
    return None


async def job_api_ttft(
    port: int, *, count: int, warmup: int, expected: str, chunks: int
) -> dict[str, Any]:
    """Sequential replies, the three APIs taking turns in a rotating order (so drift hits all
    alike): time from sending the request to the first text delta, and to the headers."""
    out: dict[str, list[float]] = {api: [] for api in APIS}
    headers: dict[str, list[float]] = {api: [] for api in APIS}
    errors: Counter[str] = Counter()
    for i in range(warmup + count):
        shift = i % len(APIS)
        for api in APIS[shift:] + APIS[:shift]:
            answer = await api_stream(api, port, timeout=30)
            problem = fault(answer, expected, chunks)
            if problem is not None:
                errors[f"{api}: {problem}"] += 1
            elif i >= warmup:
                out[api].append(answer.times[0] - answer.t_sent)
                headers[api].append(answer.t_headers - answer.t_sent)
    return {"ttft": out, "headers": headers, "errors": dict(errors.most_common(5))}


async def job_api_streams(
    port: int,
    api: str,
    *,
    streams: int,
    expected: str,
    chunks: int,
    timeout: float,  # noqa: ASYNC109
) -> dict[str, Any]:
    """`streams` concurrent replies through `api`, each read to its end and checked; the run
    ids of the complete ones, to check what was saved in a job of its own (whose requests
    are not this one's CPU)."""
    started = time.monotonic()
    answers = await asyncio.gather(
        *(api_stream(api, port, timeout=timeout) for _ in range(streams))
    )
    elapsed = time.monotonic() - started
    errors: Counter[str] = Counter()
    run_ids: list[str] = []
    for answer in answers:
        problem = fault(answer, expected, chunks)
        if problem is not None:
            errors[problem] += 1
        elif "x-run-id" in answer.headers:
            run_ids.append(answer.headers["x-run-id"])
        else:
            errors["no X-Run-Id header"] += 1
    return {
        "complete": len(run_ids),
        "run_ids": run_ids,
        "elapsed": elapsed,
        "errors": dict(errors.most_common(5)),
    }


async def job_api_saved(port: int, run_ids: list[str], expected: str) -> dict[str, Any]:
    """How many of the runs were saved completed with exactly `expected`."""
    saved = await saved_runs(port, run_ids, deadline=time.monotonic() + 60)
    equal, statuses = check_saved(saved, dict.fromkeys(run_ids, expected))
    return {"saved_equal": equal, "statuses": dict(statuses)}
