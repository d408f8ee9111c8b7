"""Load-client jobs about runs outliving their readers: the disconnect storm, fan-out to many
readers, and resuming with `Last-Event-ID`."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

from bench.httpclient import Mode, Response, request
from bench.jobs import Target, check_saved, direct, gateway, parse_stamp, resume, saved_runs, stream


async def job_storm(
    target: Target,
    *,
    drops: list[int],
    ramp: float,
    expected: str,
    timeout: float,  # noqa: ASYNC109
) -> dict[str, Any]:
    """One stream per entry of `drops`, each hung up after that many text events (0: right
    after the headers). For the gateway, then wait for every run to end and check that each
    saved reply is exactly what the upstream sent."""
    answers = [Response() for _ in drops]

    async def one(i: int) -> None:
        await asyncio.sleep(ramp * i / len(drops))
        await stream(target, result=answers[i], stop_after=drops[i], timeout=timeout)

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(len(drops))))
    dropped_at = time.monotonic() - started
    errors = Counter(a.error[:80] for a in answers if a.error)
    result: dict[str, Any] = {
        "streams": len(drops),
        "dropped": sum(1 for a in answers if a.dropped),
        "events_read": sum(len(a.times) for a in answers),
        "read_in_full": sum(1 for a in answers if a.done),
        "errors": dict(errors.most_common(5)),
        "all_dropped_after": dropped_at,
    }
    if target["kind"] == "gateway":
        run_ids = [a.headers["x-run-id"] for a in answers if "x-run-id" in a.headers]
        # The runs go on after their readers left; give them time to finish under load.
        saved = await saved_runs(int(target["port"]), run_ids, deadline=time.monotonic() + 240)
        equal, statuses = check_saved(saved, dict.fromkeys(run_ids, expected))
        result.update(
            run_ids=len(run_ids),
            saved_equal=equal,
            statuses=dict(statuses),
            all_saved_after=time.monotonic() - started,
        )
    return result


def _live_latencies(answer: Response) -> list[float]:
    """Arrival minus send time of the chunks sent after this reader was connected."""
    out: list[float] = []
    for arrived, text in zip(answer.times, answer.texts, strict=False):
        sent = parse_stamp(text)[1]
        if sent >= answer.t_headers:
            out.append(arrived - sent)
    return out


async def job_fanout(target: Target, *, readers: int, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
    """Gateway: one run, read by `readers` connections (the POST itself and `readers - 1`
    `GET /runs/{id}/stream`). Direct: `readers` separate upstream streams. Per-reader
    delivery latency is a chunk's arrival time minus the time the upstream sent it."""
    if target["kind"] == "gateway":
        port = int(target["port"])
        loop = asyncio.get_running_loop()
        got_id: asyncio.Future[str] = loop.create_future()

        def on_headers(answer: Response) -> None:
            if not got_id.done():
                got_id.set_result(answer.headers.get("x-run-id", ""))

        first = asyncio.create_task(stream(target, on_headers=on_headers, timeout=timeout))
        run_id = await asyncio.wait_for(got_id, 30)
        others = [
            request(port, "GET", f"/runs/{run_id}/stream", mode=Mode.GATEWAY, timeout=timeout)
            for _ in range(readers - 1)
        ]
        answers = [await first, *await asyncio.gather(*others)]
    else:
        answers = list(
            await asyncio.gather(*(stream(target, timeout=timeout) for _ in range(readers)))
        )
    latencies: list[float] = []
    reader_medians: list[float] = []
    for answer in answers:
        mine = sorted(_live_latencies(answer))
        latencies.extend(mine)
        if mine:
            reader_medians.append(mine[len(mine) // 2])
    return {
        "readers": readers,
        "complete": sum(1 for a in answers if a.done and not a.error),
        "delivered": sum(len(a.times) for a in answers),
        "latencies": latencies,
        "reader_medians": reader_medians,
        "errors": dict(Counter(a.error[:80] for a in answers if a.error).most_common(5)),
    }


async def _resume_samples(
    gateway_port: int,
    direct_port: int,
    tails: list[Response],
    samples: int,
    rng: random.Random,
    *,
    live: bool,
) -> dict[str, Any]:
    """Reconnect `samples` times to the tails' runs at random `Last-Event-ID`s, alternating
    with a fresh direct request; time from sending to the first event for each."""
    resumed: list[float] = []
    fresh: list[float] = []
    wrong = 0
    for k in range(samples):
        tail = tails[k % len(tails)]
        if live and tail.done:
            break
        last_seq = tail.ids[-1] if tail.ids else 1
        last_event_id = rng.randint(1, max(1, last_seq - 1))
        run_id = tail.headers["x-run-id"]
        answer = await resume(gateway_port, run_id, last_event_id, stop_after=1, timeout=10)
        if answer.times:
            resumed.append(answer.times[0] - answer.t_sent)
            wrong += answer.ids[0] != last_event_id + 1
        else:
            wrong += 1
        baseline = await stream(direct(direct_port), stop_after=1, timeout=10)
        if baseline.times:
            fresh.append(baseline.times[0] - baseline.t_sent)
    return {"gateway": resumed, "direct": fresh, "wrong": wrong}


async def job_resume(
    gateway_port: int,
    direct_port: int,
    *,
    runs: int,
    samples: int,
    evict_wait: float,
    timeout: float,  # noqa: ASYNC109
) -> dict[str, Any]:
    """Resume to live runs, then to the same runs finished (held in memory), then, after
    `evict_wait` seconds, finished and evicted (rebuilt from the store)."""
    rng = random.Random(7)
    tails = [Response() for _ in range(runs)]
    tasks = [
        asyncio.create_task(stream(gateway(gateway_port), result=tail, timeout=timeout))
        for tail in tails
    ]
    deadline = time.monotonic() + 10
    # Poll the tails' progress (they are filled in by other tasks).
    while any(len(t.ids) < 20 for t in tails) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    out: dict[str, Any] = {}
    out["live"] = await _resume_samples(gateway_port, direct_port, tails, samples, rng, live=True)
    await asyncio.gather(*tasks)
    out["finished"] = await _resume_samples(
        gateway_port, direct_port, tails, samples, rng, live=False
    )
    await asyncio.sleep(evict_wait)
    out["evicted"] = await _resume_samples(
        gateway_port, direct_port, tails, samples, rng, live=False
    )
    out["tails_complete"] = sum(1 for t in tails if t.done)
    return out
