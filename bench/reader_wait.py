"""`python -m bench.reader_wait`: what one wake-up of a live reader costs, in process.

N logs, one reader each; every round appends one event to every log and lets the readers run.
The readers wait either as SSE readers did with a timer per wait (`log.wait(cursor,
timeout=...)`, an `asyncio.timeout` armed and cancelled each time) or as they do now, on the
ping clock (`gateway/ping_clock.py`: no timer, one registration per reader). Printed: CPU per
event and reader (append + wake + read), on uvloop as the server runs, three repetitions each.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop
from loguru import logger

from martlet_molt.core.local_log import LocalLog
from martlet_molt.gateway.ping_clock import ping_clock

PING_SECONDS = 15.0

Reader = Callable[[LocalLog], Coroutine[Any, Any, None]]


async def with_timer(log: LocalLog) -> None:
    """Read to the end, waiting with a timer per wait."""
    cursor = 0
    while True:
        batch = log.events_after(cursor, limit=512)
        if batch:
            cursor = batch[-1].seq
            if log.closed:
                return
            continue
        await log.wait(cursor, timeout=PING_SECONDS)


async def with_clock(log: LocalLog) -> None:
    """Read to the end, waiting as `SseResponse` does: on the ping clock."""
    clock = ping_clock()
    silence = clock.join(PING_SECONDS)
    cursor = 0
    try:
        while True:
            batch = log.events_after(cursor, limit=512)
            if batch:
                cursor = batch[-1].seq
                if log.closed:
                    return
                continue
            await silence.wait(log, cursor, PING_SECONDS)
    finally:
        clock.leave(silence)


async def measure(reader: Reader, readers: int, rounds: int) -> float:
    """CPU µs per event and reader over `rounds` appends to each of `readers` logs."""
    logs = [LocalLog("bench") for _ in range(readers)]
    for log in logs:
        log.start()
    tasks = [asyncio.ensure_future(reader(log)) for log in logs]
    await asyncio.sleep(0)
    started = time.process_time()
    for _ in range(rounds):
        for log in logs:
            log.put_sync("x")
        await asyncio.sleep(0)  # the readers wake
        await asyncio.sleep(0)  # and wait again
    spent = time.process_time() - started
    for log in logs:
        log.complete()
    await asyncio.gather(*tasks)
    return spent / (readers * rounds) * 1e6


def main(argv: list[str] | None = None) -> None:
    """Print both ways' cost, alternating."""
    parser = argparse.ArgumentParser(prog="python -m bench.reader_wait", description=__doc__)
    parser.add_argument("--readers", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args(argv)
    logger.remove()  # the logs' state changes are not what is measured
    for _ in range(3):
        for name, reader in (("timer per wait", with_timer), ("ping clock", with_clock)):
            cost = uvloop.run(measure(reader, args.readers, args.rounds))
            print(f"{name:>15}: {cost:.2f} µs per event and reader (append + wake + read)")


if __name__ == "__main__":
    main()
