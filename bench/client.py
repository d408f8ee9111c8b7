"""The load client: a separate process (so the servers' CPU accounting is clean) that runs one
job at a time on its own event loop (uvloop) and sends the result back through a pipe."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
import traceback
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

import psutil

JOB_NAMES = (
    "ttft",
    "stream",
    "saved",
    "concurrent",
    "storm",
    "fanout",
    "resume",
    "relay_across",
    "resume_across",
    "cancel_across",
    "spread",
    "api_ttft",
    "api_streams",
    "api_saved",
)


def _jobs() -> dict[str, Callable[..., Awaitable[dict[str, Any]]]]:
    from bench.jobs import job_concurrent, job_saved, job_stream, job_ttft
    from bench.jobs_cluster import (
        job_cancel_across,
        job_relay_across,
        job_resume_across,
        job_spread,
    )
    from bench.jobs_openai import job_api_saved, job_api_streams, job_api_ttft
    from bench.jobs_runs import job_fanout, job_resume, job_storm

    return {
        "ttft": job_ttft,
        "stream": job_stream,
        "saved": job_saved,
        "concurrent": job_concurrent,
        "storm": job_storm,
        "fanout": job_fanout,
        "resume": job_resume,
        "relay_across": job_relay_across,
        "resume_across": job_resume_across,
        "cancel_across": job_cancel_across,
        "spread": job_spread,
        "api_ttft": job_api_ttft,
        "api_streams": job_api_streams,
        "api_saved": job_api_saved,
    }


def _raise_fd_limit() -> None:
    """Allow thousands of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def worker(conn: Connection) -> None:
    """The client process's main loop: `(name, kwargs)` in, `("ok", result)` or
    `("error", traceback)` out, until `None` arrives or the pipe closes."""
    _raise_fd_limit()
    try:
        import uvloop

        runner: Callable[[Awaitable[dict[str, Any]]], dict[str, Any]] = uvloop.run  # type: ignore[assignment]
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        runner = asyncio.run  # type: ignore[assignment]
    jobs = _jobs()
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        name, kwargs = message
        try:
            conn.send(("ok", runner(jobs[name](**kwargs))))
        except Exception:
            conn.send(("error", traceback.format_exc()))


class LoadClient:
    """The parent's handle on the client process."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=worker, args=(child,), name="bench-client")
        self._process.start()
        child.close()
        assert self._process.pid is not None
        self.ps = psutil.Process(self._process.pid)

    def call(self, name: str, *, limit: float, **kwargs: Any) -> dict[str, Any]:
        """Run job `name` in the client process; give up after `limit` seconds."""
        if name not in JOB_NAMES:
            raise ValueError(f"unknown job {name}")
        self._conn.send((name, kwargs))
        if not self._conn.poll(limit):
            self.close()
            raise TimeoutError(f"load client job {name} took more than {limit:.0f}s")
        status, payload = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"load client job {name} failed:\n{payload}")
        result: dict[str, Any] = payload
        return result

    def close(self) -> None:
        """Stop the client process."""
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._conn.close()
