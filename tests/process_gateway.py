"""The real gateway as a separate OS process (`python -m martlet_molt serve`), for tests that
kill it (SIGKILL), stop it (SIGTERM) and start it again on the same database.

The process gets a clean environment: every inherited `MARTLET_*` / `OPENAI_*` variable is
dropped, then the test's settings are added (SQLite file in the test's directory, the in-process
fake upstream as provider). Its stdout and stderr go to a log file the test can read.

    with ProcessGateways(upstream, model, tmp_path) as start:
        gateway = start(MARTLET_CHECKPOINT_SECONDS="0.2")
        ...
        gateway.kill()
        gateway.restart()

Whatever a test does, every process it started is killed when the `with` block ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from martlet_molt.testing import FakeUpstream

STARTUP_TIMEOUT = 20.0
"""Seconds a gateway process may take to answer `/healthz`."""

_ENV_PREFIXES = ("MARTLET_", "OPENAI_")
_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(settings: dict[str, str]) -> dict[str, str]:
    """The parent's environment without gateway or provider settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    # `python -m martlet_molt` must find the package even without an editable install.
    src = str(_ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.update(settings)
    return env


class GatewayProcess:
    """One gateway process (and its successors after `restart`) on one port and database."""

    def __init__(
        self,
        *,
        env: dict[str, str],
        cwd: Path,
        db_path: Path | None,
        log_path: Path,
        args: Sequence[str] = (),
    ) -> None:
        self.env = env
        self.cwd = cwd
        self._db_path = db_path
        self.log_path = log_path
        self.args = list(args)
        """More arguments for `serve` (for example `--workers 2`)."""
        self.port = free_port()
        self.generation = 0
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- life cycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Root URL of the gateway."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        """The SQLite file (raises for a gateway whose database is not SQLite)."""
        if self._db_path is None:
            raise RuntimeError("this gateway's database is not a SQLite file")
        return self._db_path

    @property
    def pid(self) -> int:
        """The current process's id."""
        return self._process().pid

    def _process(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError("the gateway process was never started")
        return self._popen

    def start(self, timeout: float = STARTUP_TIMEOUT) -> GatewayProcess:
        """Spawn the process and return once `/healthz` answers 200 (bounded)."""
        self.launch()
        self.wait_ready(timeout)
        return self

    def launch(self) -> GatewayProcess:
        """Spawn the process without waiting for it (`wait_ready` waits): several gateways
        start side by side."""
        if self._popen is not None and self._popen.poll() is None:
            raise RuntimeError("the gateway process is already running")
        self.generation += 1
        cmd = [sys.executable, "-m", "martlet_molt", "serve"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), *self.args]
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"\n=== gateway process #{self.generation} ===\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                cmd,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Return once `/healthz` answers 200; raise (with the log) if the process exits or
        does not answer within `timeout`."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=1.0) as client:
            while True:
                code = self.returncode
                if code is not None:
                    raise RuntimeError(
                        f"gateway exited with {code} before answering:\n{self.log_text()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/healthz").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"gateway did not start in {timeout}s:\n{self.log_text()}")
                time.sleep(0.05)

    @property
    def returncode(self) -> int | None:
        """The exit code (negative: killed by that signal), None while running."""
        return None if self._popen is None else self._popen.poll()

    @property
    def alive(self) -> bool:
        """Whether the current process still runs."""
        return self._popen is not None and self._popen.poll() is None

    def kill(self) -> int:
        """SIGKILL: no shutdown code runs at all. Returns the exit code (-9)."""
        process = self._process()
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        return process.wait(10)

    def terminate(self) -> None:
        """SIGTERM: the gateway's graceful shutdown; `wait` for its end."""
        process = self._process()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)

    def pause(self) -> None:
        """SIGSTOP: the process is frozen (it accepts nothing, its kernel still queues
        connections); `resume` thaws it."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        os.kill(self.pid, signal.SIGCONT)

    def wait(self, timeout: float) -> int:
        """The exit code once the process has ended; raises `subprocess.TimeoutExpired`."""
        return self._process().wait(timeout)

    def restart(self, timeout: float = STARTUP_TIMEOUT) -> GatewayProcess:
        """A new process with the same environment, port and database (kills the old one)."""
        if self.alive:
            self.kill()
        return self.start(timeout)

    # -- looking inside ------------------------------------------------------------------

    def log_text(self, *, current_only: bool = False) -> str:
        """Everything the processes wrote (or only the current process's part)."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        if current_only:
            data = data[self._log_offset :]
        return data.decode("utf-8", errors="replace")

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> bool:
        """Whether the current process logged `needle` within `timeout` (bounded poll)."""
        deadline = time.monotonic() + timeout
        while needle not in self.log_text(current_only=True):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def query(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query on the database file (safe while the process runs)."""
        return read_only_query(self.db_path, sql, parameters)


def read_only_query(
    db_path: Path, sql: str, parameters: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    """One query on a SQLite file opened read-only (the gateway may be writing it)."""
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
    try:
        return connection.execute(sql, parameters).fetchall()
    finally:
        connection.close()


class ProcessGateways:
    """Starts gateway processes for one test; kills every one still running at the end."""

    def __init__(self, upstream: FakeUpstream, model: str, directory: Path) -> None:
        self.upstream = upstream
        self.model = model
        self.directory = directory
        self.started: list[GatewayProcess] = []

    def __call__(self, name: str = "gateway", **settings: str) -> GatewayProcess:
        """Start a gateway process with these extra environment variables."""
        db_path = self.directory / f"{name}.db"
        env = clean_env(
            {
                "OPENAI_BASE_URL": self.upstream.base_url,
                "OPENAI_API_KEY": "test-key",
                "MARTLET_MODEL": self.model,
                "MARTLET_DATABASE_URL": f"sqlite:///{db_path}",
                "MARTLET_LOG_LEVEL": "INFO",
                **settings,
            }
        )
        gateway = GatewayProcess(
            env=env, cwd=self.directory, db_path=db_path, log_path=self.directory / f"{name}.log"
        )
        self.started.append(gateway)
        return gateway.start()

    def close(self) -> None:
        """Kill every process still running (and reap it)."""
        for gateway in self.started:
            if gateway.alive:
                with contextlib.suppress(Exception):
                    gateway.kill()

    def __enter__(self) -> ProcessGateways:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextlib.contextmanager
def process_gateways(
    upstream: FakeUpstream, model: str, directory: Path
) -> Iterator[ProcessGateways]:
    """For a fixture: `yield` the factory; leftovers are killed on the way out."""
    with ProcessGateways(upstream, model, directory) as factory:
        yield factory
