"""Load-client jobs about several instances: a run read on its owner and on another instance,
resumed and cancelled through another instance, and many streams spread over instances with
their saved replies read back from PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import asyncpg

from bench.httpclient import Mode, Response, request
from bench.jobs import FINAL, gaps_of, gateway, parse_stamp, resume, stream

SAVED_SQL = """
SELECT r.run_id, r.status, r.content || coalesce(
  (SELECT string_agg(p.content, '' ORDER BY p.part) FROM run_parts p WHERE p.run_id = r.run_id),
  '')
FROM runs r WHERE r.run_id = ANY($1::text[])
"""
"""Each run's status and saved text (its row, then any parts)."""
READER_ATTEMPTS = 50
READER_RETRY_SECONDS = 0.01


def _stamped(answer: Response, tokens: int) -> bool:
    """Read to the end, no error, every stamped chunk 0..tokens-1 exactly once, in order."""
    if not answer.done or answer.error:
        return False
    try:
        return [parse_stamp(t)[0] for t in answer.texts] == list(range(tokens))
    except ValueError:
        return False


def _latencies_after(answer: Response, cutoff: float) -> list[float]:
    """Arrival minus send time of the chunks the upstream sent after `cutoff`."""
    out: list[float] = []
    for arrived, text in zip(answer.times, answer.texts, strict=False):
        sent = parse_stamp(text)[1]
        if sent >= cutoff:
            out.append(arrived - sent)
    return out


async def _started(
    owner_port: int,
    result: Response,
    timeout: float,  # noqa: ASYNC109
) -> tuple[asyncio.Task[Response], str]:
    """Start a chat on `owner_port` read into `result`; return its task and run id."""
    loop = asyncio.get_running_loop()
    got_id: asyncio.Future[str] = loop.create_future()

    def on_headers(answer: Response) -> None:
        if not got_id.done():
            got_id.set_result(answer.headers.get("x-run-id", ""))

    task = asyncio.create_task(
        stream(gateway(owner_port), result=result, on_headers=on_headers, timeout=timeout)
    )
    done, _ = await asyncio.wait({task, got_id}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    run_id = got_id.result() if got_id in done else ""
    got_id.cancel()
    return task, run_id


async def job_relay_across(
    owner_port: int,
    reader_port: int,
    *,
    streams: int,
    tokens: int,
    ramp: float,
    timeout: float,  # noqa: ASYNC109
) -> dict[str, Any]:
    """`streams` paced runs started on `owner_port` (read there by the POST) and each read by
    `GET /runs/{id}/stream` on `reader_port` too. Delivery latency of each reader counts only
    the chunks sent once both readers were connected, so both see the same chunks."""
    owners = [Response() for _ in range(streams)]
    readers = [Response() for _ in range(streams)]
    refused: Counter[int] = Counter()  # 503 answers to the second reader, by attempt

    async def one(i: int) -> None:
        await asyncio.sleep(ramp * i / streams)
        task, run_id = await _started(owner_port, owners[i], timeout)
        path = f"/runs/{run_id}/stream"
        # Connect right after the owner's headers; a run not yet readable there is retried.
        for attempt in range(READER_ATTEMPTS if run_id else 0):
            readers[i] = Response()
            await request(
                reader_port, "GET", path, mode=Mode.GATEWAY, result=readers[i], timeout=timeout
            )
            if readers[i].status != 503:
                break
            refused[attempt] += 1
            await asyncio.sleep(READER_RETRY_SECONDS)
        await task

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(streams)))
    elapsed = time.monotonic() - started
    owner_lat: list[float] = []
    reader_lat: list[float] = []
    complete = 0
    for owner, reader in zip(owners, readers, strict=True):
        cutoff = max(owner.t_headers, reader.t_headers)
        owner_lat += _latencies_after(owner, cutoff)
        reader_lat += _latencies_after(reader, cutoff)
        complete += _stamped(owner, tokens) and _stamped(reader, tokens)
    errors = Counter(a.error[:80] for a in owners + readers if a.error)
    return {
        "streams": streams,
        "complete": complete,
        "refused_first": refused[0],
        "refused": sum(refused.values()),
        "owner": owner_lat,
        "reader": reader_lat,
        "elapsed": elapsed,
        "errors": dict(errors.most_common(5)),
    }


async def _resume_round(
    readers: dict[str, int],
    tails: list[Response],
    samples: int,
    rng: random.Random,
    *,
    live: bool,
) -> dict[str, Any]:
    """`samples` reconnects per reader, the readers taking turns, each to one of the tails'
    runs at a random `Last-Event-ID`: time from sending to the first replayed event."""
    times: dict[str, list[float]] = {name: [] for name in readers}
    wrong = 0
    for k in range(samples):
        tail = tails[k % len(tails)]
        if live and tail.done:
            break
        names = list(readers) if k % 2 == 0 else list(readers)[::-1]
        for name in names:
            last_seq = tail.ids[-1] if tail.ids else 1
            last_event_id = rng.randint(1, max(1, last_seq - 1))
            run_id = tail.headers["x-run-id"]
            answer = await resume(readers[name], run_id, last_event_id, stop_after=1, timeout=10)
            if answer.times:
                times[name].append(answer.times[0] - answer.t_sent)
                wrong += answer.ids[0] != last_event_id + 1
            else:
                wrong += 1
    return {"times": times, "wrong": wrong}


async def job_resume_across(
    owner_port: int,
    readers: dict[str, int],
    *,
    runs: int,
    samples: int,
    timeout: float,  # noqa: ASYNC109
) -> dict[str, Any]:
    """Runs started on `owner_port`; resumes with `Last-Event-ID` on each of `readers` (name ->
    port), while the runs stream and again once they ended."""
    rng = random.Random(9)
    tails = [Response() for _ in range(runs)]
    tasks = [
        asyncio.create_task(stream(gateway(owner_port), result=tail, timeout=timeout))
        for tail in tails
    ]
    deadline = time.monotonic() + 10
    # Poll the tails' progress (they are filled in by other tasks).
    while any(len(t.ids) < 10 for t in tails) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    live = await _resume_round(readers, tails, samples, rng, live=True)
    await asyncio.gather(*tasks)
    ended = await _resume_round(readers, tails, samples, rng, live=False)
    return {"live": live, "ended": ended, "tails_complete": sum(1 for t in tails if t.done)}


async def _upstream_stats(port: int) -> dict[str, Any]:
    answer = await request(port, "GET", "/_fake/stats", mode=Mode.RAW, timeout=5)
    stats: dict[str, Any] = answer.json() if answer.status == 200 else {}
    return stats


async def job_cancel_across(
    owner_port: int,
    cancellers: dict[str, int],
    upstream_port: int,
    *,
    rounds: int,
    after_events: int,
    timeout: float,  # noqa: ASYNC109
) -> dict[str, Any]:
    """One run at a time on `owner_port`: once its reader has `after_events` events,
    `POST /runs/{id}/cancel` to one of `cancellers` (name -> port, taking turns); the time
    from sending the cancel until the fake upstream saw its client (the owner) disconnect."""
    times: dict[str, list[float]] = {name: [] for name in cancellers}
    answered: dict[str, list[float]] = {name: [] for name in cancellers}
    failures: Counter[str] = Counter()
    for k in range(rounds):
        names = list(cancellers) if k % 2 == 0 else list(cancellers)[::-1]
        for name in names:
            tail = Response()
            task, run_id = await _started(owner_port, tail, timeout)
            deadline = time.monotonic() + 10
            while len(tail.ids) < after_events and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            before = int((await _upstream_stats(upstream_port)).get("client_disconnected", 0))
            sent = time.monotonic()
            path = f"/runs/{run_id}/cancel"
            answer = await request(cancellers[name], "POST", path, mode=Mode.RAW, timeout=10)
            answered[name].append(time.monotonic() - sent)
            if answer.status >= 300:
                failures[f"{name}: HTTP {answer.status}"] += 1
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                stats = await _upstream_stats(upstream_port)
                if int(stats.get("client_disconnected", 0)) > before:
                    times[name].append(float(stats["last_disconnect_at"]) - sent)
                    break
                await asyncio.sleep(0.002)
            else:
                failures[f"{name}: upstream still connected after 5 s"] += 1
            await task
    return {"times": times, "answered": answered, "failures": dict(failures)}


async def _saved_in_postgres(
    database_url: str, run_ids: list[str], *, deadline: float
) -> dict[str, tuple[str, str]]:
    """`run_id -> (status, saved text)` from PostgreSQL, read again until every run is final
    or `deadline` passes."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        while True:
            rows = await conn.fetch(SAVED_SQL, run_ids)
            saved = {str(r[0]): (str(r[1]), str(r[2])) for r in rows}
            final = all(saved.get(i, ("", ""))[0] in FINAL for i in run_ids)
            if final or time.monotonic() > deadline:
                return saved
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def job_spread(
    ports: list[int],
    *,
    streams: int,
    tokens: int,
    ramp: float,
    database_url: str,
    timeout: float,  # noqa: ASYNC109
) -> dict[str, Any]:
    """`streams` concurrent paced streams, started in turn on each of `ports` over `ramp`
    seconds, each read to its end; then every run's saved text is read from PostgreSQL and
    compared with what the upstream sent (every stamped chunk, in order)."""
    answers = [Response() for _ in range(streams)]

    async def one(i: int) -> None:
        await asyncio.sleep(ramp * i / streams)
        await stream(gateway(ports[i % len(ports)]), result=answers[i], timeout=timeout)

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(streams)))
    elapsed = time.monotonic() - started
    expected = {
        a.headers["x-run-id"]: a.text
        for a in answers
        if _stamped(a, tokens) and "x-run-id" in a.headers
    }
    saved = await _saved_in_postgres(database_url, list(expected), deadline=time.monotonic() + 60)
    statuses = Counter(saved.get(run_id, ("missing", ""))[0] for run_id in expected)
    equal = sum(1 for run_id, text in expected.items() if saved.get(run_id) == ("completed", text))
    gaps: list[float] = []
    for answer in answers:
        gaps += gaps_of(answer.times)
    return {
        "streams": streams,
        "complete": len(expected),
        "saved_equal": equal,
        "statuses": dict(statuses),
        "ttfts": [a.times[0] - a.t_sent for a in answers if a.times],
        "latencies": [
            t - parse_stamp(x)[1] for a in answers for t, x in zip(a.times, a.texts, strict=True)
        ],
        "gaps": gaps,
        "elapsed": elapsed,
        "errors": dict(Counter(a.error[:80] for a in answers if a.error).most_common(5)),
    }
