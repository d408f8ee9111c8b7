"""What the load client does, one job per call: building blocks shared by the scenarios, and
the single-stream and many-streams jobs. Jobs run in the client process and return plain,
picklable data (lists of floats in seconds, counts)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from typing import Any

from bench.httpclient import Mode, Response, request

MESSAGE = "Tell me something long."
TOKEN_TEXT = "tok{i} "
"""The fake upstream's chunk text where a scenario sets no other ("{i}": the chunk's index)."""
MODEL = "gpt-4o-mini"
FINAL = {"completed", "failed", "cancelled", "interrupted"}

Target = dict[str, Any]
"""`{"kind": "gateway" | "direct", "port": int}`: the gateway, or an OpenAI-style server (the
upstream itself or the pass-through proxy)."""


def gateway(port: int) -> Target:
    """The gateway under test."""
    return {"kind": "gateway", "port": port}


def direct(port: int) -> Target:
    """An OpenAI-compatible server read directly (the baseline)."""
    return {"kind": "direct", "port": port}


def expected_text(token_text: str, count: int) -> str:
    """The reply the fake upstream sends for `count` chunks of `token_text`."""
    return "".join(token_text.replace("{i}", str(i)) for i in range(count))


def parse_stamp(text: str) -> tuple[int, float]:
    """`(index, sent_at)` of one stamped chunk (`<index>@<monotonic_ns> `), time in seconds."""
    index, _, stamp = text.strip().partition("@")
    return int(index), int(stamp) / 1e9


async def stream(target: Target, **options: Any) -> Response:
    """Open one reply stream on `target` (options as for `request`)."""
    port = int(target["port"])
    if target["kind"] == "gateway":
        body: dict[str, Any] = {"message": MESSAGE}
        return await request(port, "POST", "/chat/stream", mode=Mode.GATEWAY, body=body, **options)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": MESSAGE}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return await request(
        port, "POST", "/v1/chat/completions", mode=Mode.DIRECT, body=body, **options
    )


async def resume(port: int, run_id: str, last_event_id: int, **options: Any) -> Response:
    """Reconnect to a run's stream with `Last-Event-ID`."""
    headers = {"Last-Event-ID": str(last_event_id)}
    path = f"/runs/{run_id}/stream"
    return await request(port, "GET", path, mode=Mode.GATEWAY, headers=headers, **options)


async def saved_runs(
    port: int, run_ids: list[str], *, deadline: float, concurrency: int = 32
) -> dict[str, dict[str, Any]]:
    """`GET /runs/{id}` for each run, retried until the run is final or `deadline` passes."""
    gate = asyncio.Semaphore(concurrency)
    out: dict[str, dict[str, Any]] = {}

    async def one(run_id: str) -> None:
        while True:
            async with gate:
                answer = await request(port, "GET", f"/runs/{run_id}", mode=Mode.RAW, timeout=30)
            body: dict[str, Any] = answer.json() if answer.status == 200 else {}
            out[run_id] = body
            if body.get("status") in FINAL or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.2)

    await asyncio.gather(*(one(run_id) for run_id in run_ids))
    return out


def check_saved(
    saved: dict[str, dict[str, Any]], expected: dict[str, str]
) -> tuple[int, Counter[str]]:
    """How many runs were saved completed with exactly the expected text, and the statuses."""
    statuses: Counter[str] = Counter()
    equal = 0
    for run_id, text in expected.items():
        body = saved.get(run_id, {})
        status = str(body.get("status", "missing"))
        statuses[status] += 1
        if status == "completed" and body.get("content") == text:
            equal += 1
    return equal, statuses


def gaps_of(times: list[float]) -> list[float]:
    """Time between consecutive events."""
    return [b - a for a, b in itertools.pairwise(times)]


# -- jobs -------------------------------------------------------------------------------------


async def job_ttft(gateway_port: int, direct_port: int, count: int, warmup: int) -> dict[str, Any]:
    """Sequential requests, gateway and direct alternating: time from sending the request to
    the first text event, and to the response headers."""
    targets = [gateway(gateway_port), direct(direct_port)]
    out: dict[str, list[float]] = {"gateway": [], "direct": [], "gateway_hdr": [], "direct_hdr": []}
    errors: list[str] = []
    for i in range(warmup + count):
        order = targets if i % 2 == 0 else targets[::-1]
        for target in order:
            answer = await stream(target, timeout=30)
            if answer.error or not answer.times:
                errors.append(answer.error or "no text")
                continue
            if i >= warmup:
                kind = target["kind"]
                out[kind].append(answer.times[0] - answer.t_sent)
                out[f"{kind}_hdr"].append(answer.t_headers - answer.t_sent)
    return {**out, "errors": errors[:5], "error_count": len(errors)}


async def job_stream(
    target: Target,
    *,
    expected: str | None = None,
    keep_times: bool = False,
    verify: bool = True,
    timeout: float = 300.0,  # noqa: ASYNC109
) -> dict[str, Any]:
    """One stream read to its end: chunk count, duration, and whether the text (and for the
    gateway the saved reply) is exactly what the upstream sent."""
    answer = await stream(target, timeout=timeout)
    text = answer.text
    result: dict[str, Any] = {
        "events": len(answer.times),
        "chars": len(text),
        "done": answer.done,
        "error": answer.error,
        "ttft": answer.times[0] - answer.t_sent if answer.times else None,
        "duration": (answer.times[-1] - answer.t_sent) if answer.times else None,
        "text_ok": expected is None or text == expected,
        "saved_ok": None,
    }
    if keep_times and answer.times:
        result["times"] = [t - answer.t_sent for t in answer.times]
    run_id = answer.headers.get("x-run-id")
    result["run_id"] = run_id
    if verify and target["kind"] == "gateway" and run_id:
        saved = await job_saved(int(target["port"]), run_id, expected if expected else text)
        result["saved_ok"] = saved["saved_ok"]
    return result


async def job_saved(port: int, run_id: str, expected: str) -> dict[str, Any]:
    """`GET /runs/{id}` of one run: whether it was saved completed with exactly `expected`."""
    saved = await saved_runs(port, [run_id], deadline=time.monotonic() + 30)
    body = saved.get(run_id, {})
    return {"saved_ok": body.get("status") == "completed" and body.get("content") == expected}


def _stamped_ok(texts: list[str], count: int) -> bool:
    """Whether stamped chunks are exactly indices 0..count-1 in order."""
    try:
        return [parse_stamp(t)[0] for t in texts] == list(range(count))
    except ValueError:
        return False


async def job_concurrent(
    target: Target,
    *,
    streams: int,
    tokens: int,
    ramp: float,
    timeout: float,  # noqa: ASYNC109
) -> dict[str, Any]:
    """`streams` concurrent streams of stamped chunks, started over `ramp` seconds: gaps
    between tokens, time to first token, delivery latency (arrival minus upstream send time),
    completeness, and for the gateway whether every reply was saved as it streamed."""
    answers = [Response() for _ in range(streams)]

    async def one(i: int) -> None:
        await asyncio.sleep(ramp * i / streams)
        await stream(target, result=answers[i], timeout=timeout)

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(streams)))
    streams_ended = time.monotonic()
    elapsed = streams_ended - started
    gaps: list[float] = []
    latencies: list[float] = []
    ttfts: list[float] = []
    complete: dict[str, str] = {}
    complete_count = 0
    errors: Counter[str] = Counter()
    for answer in answers:
        if answer.error:
            errors[answer.error[:80]] += 1
        if answer.times:
            ttfts.append(answer.times[0] - answer.t_sent)
        gaps.extend(gaps_of(answer.times))
        latencies.extend(
            t - parse_stamp(x)[1] for t, x in zip(answer.times, answer.texts, strict=True)
        )
        if answer.done and not answer.error and _stamped_ok(answer.texts, tokens):
            complete_count += 1
            if "x-run-id" in answer.headers:
                complete[answer.headers["x-run-id"]] = answer.text
    saved_equal = None
    statuses: dict[str, int] = {}
    if target["kind"] == "gateway":
        deadline = time.monotonic() + 60
        saved = await saved_runs(int(target["port"]), list(complete), deadline=deadline)
        saved_equal, status_counts = check_saved(saved, complete)
        statuses = dict(status_counts)
    return {
        "streams": streams,
        "complete": complete_count,
        "saved_equal": saved_equal,
        "statuses": statuses,
        "gaps": gaps,
        "latencies": latencies,
        "ttfts": ttfts,
        "elapsed": elapsed,
        "streams_ended": streams_ended,
        "errors": dict(errors.most_common(5)),
    }
