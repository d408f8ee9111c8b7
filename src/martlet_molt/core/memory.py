"""The gateway's memory: which allocator holds its objects, and giving memory back after a
burst of runs.

CPython's own small-object allocator (pymalloc) returns a 1 MiB arena to the system only when
every object in it is gone. After a burst of runs the few objects that outlive it (caches,
resized tables, pooled connections) are scattered over the arenas the burst filled, so RSS
stays at the burst's high-water mark although nearly everything was freed; no call gives those
pages back. With `PYTHONMALLOC=malloc` small objects live on glibc's heap instead, where
`malloc_trim(0)` returns every free page, also from the middle of the heap. What each kept
of a disconnect storm's RSS growth, and what malloc costs: docs/BENCHMARKS.md, "Measurements
behind the code".

So `martlet-molt serve` re-executes itself once, same pid and arguments, with
`PYTHONMALLOC=malloc` on Linux with glibc (`use_system_malloc`), unless PYTHONMALLOC is set
already (`PYTHONMALLOC=pymalloc` keeps CPython's allocator). After a large eviction
`release_idle_then_memory` first closes the connections nobody is using (the upstream's idle
keep-alives and the store's pooled connections, with their buffers and page caches), then
`release_memory` collects garbage and trims, and trims once more `FOLLOW_UP_SECONDS` later,
for what is freed only after the first pass. Without glibc only the collections run.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
import sys
from collections.abc import Awaitable, Callable

TRIM_AFTER_EVICTED = 50
"""Evicting at least this many logs in one pass is worth a collection and a trim."""

CLOSE_SETTLE_SECONDS = 0.1
"""How long closed connections get to finish closing before the collection and trim: a
transport closes its socket and drops its buffers on a later turn of the event loop."""

FOLLOW_UP_SECONDS = 15.0
"""A second collection and trim this long after `release_memory`, for memory the released
runs' connections free later (an idle upstream keep-alive closes within 10 s)."""

ALLOCATOR_ENV = "PYTHONMALLOC"
SYSTEM_ALLOCATOR = "malloc"


def _find_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # pyright: ignore[reportUnknownVariableType]


_malloc_trim = _find_malloc_trim()
_follow_up: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None


def _collect_and_trim() -> None:
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


def _follow_up_release() -> None:
    global _follow_up
    _follow_up = None
    _collect_and_trim()


def release_memory() -> None:
    """Collect garbage, then hand free heap pages back to the system where glibc allows; on
    an event loop, once more `FOLLOW_UP_SECONDS` later (one pending follow-up at a time)."""
    global _follow_up
    _collect_and_trim()
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    if _follow_up is not None:
        pending_loop, handle = _follow_up
        if pending_loop is loop and not handle.cancelled():
            return
    _follow_up = (loop, loop.call_later(FOLLOW_UP_SECONDS, _follow_up_release))


async def release_idle_then_memory(*release_idle: Callable[[], Awaitable[None]]) -> None:
    """After a burst: close what sits idle (each of `release_idle`: pooled connections nobody
    is using), let the closes complete, then `release_memory`. Whatever a burst opened would
    otherwise hold its memory until its keep-alive expired, after the trim had run."""
    for release in release_idle:
        await release()
    await asyncio.sleep(CLOSE_SETTLE_SECONDS)
    release_memory()


def uses_system_malloc() -> bool:
    """Whether this interpreter allocates Python objects with the C library's malloc
    (`PYTHONMALLOC=malloc`) rather than pymalloc, which counts its blocks."""
    return sys.getallocatedblocks() == 0


def system_malloc_command() -> list[str] | None:
    """The command line that runs this process again on glibc's malloc, or None when it should
    go on as it is: not Linux with glibc, PYTHONMALLOC already set (by the user, or by the
    re-execution itself), or the environment ignored (`python -E` / `-I`)."""
    if _malloc_trim is None or sys.flags.ignore_environment:
        return None
    if ALLOCATOR_ENV in os.environ or not sys.executable:
        return None
    return [sys.executable, *sys.orig_argv[1:]]


def use_system_malloc() -> None:
    """Re-execute this process (same pid, same arguments) with `PYTHONMALLOC=malloc`, where
    `system_malloc_command` allows; else return. Call it before anything is started: the
    process image is replaced."""
    command = system_malloc_command()
    if command is None:
        return
    os.environ[ALLOCATOR_ENV] = SYSTEM_ALLOCATOR
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(command[0], command)
    except OSError:
        # The process goes on, on pymalloc; only its memory after bursts is worse.
        del os.environ[ALLOCATOR_ENV]


def allocator_description() -> str:
    """One line saying which allocator holds Python objects, for the start-up log."""
    setting = os.environ.get(ALLOCATOR_ENV)
    source = f"PYTHONMALLOC={setting}" if setting else "PYTHONMALLOC unset"
    if uses_system_malloc():
        trim = "malloc_trim after large evictions" if _malloc_trim else "no malloc_trim"
        return f"Python objects on the C library's malloc ({source}; {trim})"
    return f"Python objects on pymalloc ({source})"
