"""The processes a scenario runs (fake upstream, gateway, pass-through proxy, local model) and
the monitor that samples their RSS and CPU while the load client works."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import psutil

from martlet_molt.testing import READY

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
READY_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The parent's environment without any gateway or provider settings, plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MARTLET_", "OPENAI_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Service:
    """One server process on 127.0.0.1."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.popen.pid)

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.popen.pid

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far."""
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        """Resident set size in bytes."""
        return int(self.ps.memory_info().rss)

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the process's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def stop_all(services: list[Service], timeout: float = 10.0) -> None:
    """SIGTERM to every service at once, then wait for each (SIGKILL after `timeout`)."""
    running = [service for service in services if service.alive()]
    for service in running:
        service.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for service in running:
        try:
            service.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            service.popen.kill()
            service.popen.wait(5)


def _spawn(
    name: str, cmd: list[str], *, cwd: Path, env: dict[str, str], log_dir: Path, port: int
) -> Service:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    return Service(name, popen, port, log_path)


def _wait_ready(service: Service, check: str | None = None, *, count: int = 1) -> None:
    """Until the port accepts connections (and the log shows `check` `count` times, if
    given)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited:\n{service.log_tail()}")
        if check is None or service.log_path.read_text(errors="replace").count(check) >= count:
            try:
                with socket.create_connection(("127.0.0.1", service.port), timeout=1):
                    return
            except OSError:
                pass
        time.sleep(0.05)
    service.stop()
    raise RuntimeError(f"{service.name} did not start:\n{service.log_tail()}")


def start_upstream(
    log_dir: Path,
    *,
    tokens: int,
    delay: float = 0.0,
    first_delay: float = 0.0,
    token_text: str | None = None,
    stamp: bool = False,
    short_first: int = 0,
    wait: bool = True,
) -> Service:
    """The fake OpenAI upstream with one script for every request but the first `short_first`,
    which get a short reply (`wait=False`: return once started; call `wait_upstream` before
    use)."""
    port = free_port()
    cmd = [PYTHON, "-m", "bench.upstream", "--port", str(port), "--tokens", str(tokens)]
    cmd += ["--delay", str(delay), "--first-delay", str(first_delay), "--max-records", "100"]
    if token_text is not None:
        cmd += ["--token-text", token_text]
    if short_first:
        cmd += ["--short-first", str(short_first)]
    if stamp:
        cmd.append("--stamp")
    service = _spawn("upstream", cmd, cwd=ROOT, env=_clean_env({}), log_dir=log_dir, port=port)
    if wait:
        wait_upstream(service)
    return service


def wait_upstream(service: Service) -> None:
    """Until the fake upstream accepts connections."""
    _wait_ready(service, READY)


def start_gateway(
    log_dir: Path,
    upstream: Service,
    settings: dict[str, str],
    *,
    wait: bool = True,
    name: str = "gateway",
    workers: int = 1,
) -> Service:
    """martlet_molt's own CLI (`python -m martlet_molt serve`), default config except
    `settings` (its environment): SQLite in `log_dir` (`<name>.db`), the fake upstream as
    provider. The upstream need not be ready yet: the gateway calls it only when a chat
    starts. `workers` > 1 runs `serve --workers N` (then `settings` must name Redis and
    PostgreSQL)."""
    port = free_port()
    database = "martlet.db" if name == "gateway" else f"{name}.db"
    env = _clean_env(
        {
            "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream.port}/v1",
            "OPENAI_API_KEY": "bench",
            "MARTLET_DATABASE_URL": f"sqlite:///{log_dir / database}",
            **settings,
        }
    )
    cmd = [PYTHON, "-m", "martlet_molt", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    service = _spawn(name, cmd, cwd=log_dir, env=env, log_dir=log_dir, port=port)
    if wait:
        wait_gateway(service, workers=workers)
    return service


def wait_gateway(service: Service, *, workers: int = 1) -> None:
    """Until the gateway (each of its `workers`) has started its app and accepts
    connections."""
    _wait_ready(service, "Application startup complete", count=workers)


def start_redis(log_dir: Path) -> Service:
    """A Redis server of the scenario's own (no persistence), so its counters and memory
    reflect only the gateways under test."""
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    cmd += ["--appendonly", "no", "--dir", str(log_dir)]
    service = _spawn("redis", cmd, cwd=log_dir, env=_clean_env({}), log_dir=log_dir, port=port)
    _wait_ready(service, "Ready to accept connections")
    return service


def start_passthrough(log_dir: Path, upstream: Service) -> Service:
    """The plain pass-through proxy in front of the upstream."""
    port = free_port()
    upstream_url = f"http://127.0.0.1:{upstream.port}/v1"
    cmd = [PYTHON, "-m", "bench.passthrough", "--port", str(port), "--upstream", upstream_url]
    service = _spawn("passthrough", cmd, cwd=ROOT, env=_clean_env({}), log_dir=log_dir, port=port)
    _wait_ready(service)
    return service


def start_local_model(
    log_dir: Path, *, parallel: int = 1, threads: int = 0
) -> tuple[Service, str, str]:
    """The gateway's local model as its own process (`bench.local_model`); returns the service
    (its port read back from the `READY <base_url> <model>` line), base URL and model name."""
    cmd = [PYTHON, "-m", "bench.local_model", "--parallel", str(parallel)]
    cmd += ["--threads", str(threads)]  # 0: every CPU
    service = _spawn("model", cmd, cwd=ROOT, env=_clean_env({}), log_dir=log_dir, port=0)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"model server exited:\n{service.log_tail()}")
        for line in service.log_path.read_text(errors="replace").splitlines():
            if line.startswith("READY "):
                _, base_url, model = line.split()
                service.port = int(base_url.rsplit(":", 1)[1].split("/", 1)[0])
                return service, base_url, model
        time.sleep(0.05)
    service.stop()
    raise RuntimeError(f"model server did not start:\n{service.log_tail()}")


def run_queue_wait(pid: int) -> float:
    """Seconds the process's main thread (the event loop) has spent runnable but waiting for
    a CPU (Linux schedstat; 0 where unavailable). High values mean the machine was
    oversubscribed."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass
class Sample:
    """RSS and CPU seconds of each watched process at one moment (seconds since the monitor
    started)."""

    t: float
    rss: dict[str, int]
    cpu: dict[str, float]


class Monitor:
    """Samples the RSS of some processes every `interval` seconds and their CPU seconds at the
    start and the end, while the `with` block runs (the load client's job)."""

    def __init__(self, processes: dict[str, Service | psutil.Process], interval: float = 0.05):
        self.processes = {
            name: proc.ps if isinstance(proc, Service) else proc for name, proc in processes.items()
        }
        self.interval = interval
        self.samples: list[Sample] = []
        self.cpu: dict[str, float] = {}
        self.waited: dict[str, float] = {}
        self._wait0: dict[str, float] = {}
        self.wall = 0.0
        self._cpu0: dict[str, float] = {}
        self._t0 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def _cpu_now(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, proc in self.processes.items():
            try:
                times = proc.cpu_times()
                out[name] = float(times.user + times.system)
            except psutil.Error:
                out[name] = 0.0
        return out

    def _waits(self) -> dict[str, float]:
        return {name: run_queue_wait(proc.pid) for name, proc in self.processes.items()}

    def _sample(self) -> None:
        rss: dict[str, int] = {}
        for name, proc in self.processes.items():
            try:
                rss[name] = int(proc.memory_info().rss)
            except psutil.Error:
                rss[name] = 0
        self.samples.append(Sample(time.monotonic() - self._t0, rss, self._cpu_now()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Monitor:
        self._t0 = time.monotonic()
        self._cpu0 = self._cpu_now()
        self._wait0 = self._waits()
        self._sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall = time.monotonic() - self._t0
        end = self._cpu_now()
        self.cpu = {name: end[name] - self._cpu0.get(name, 0.0) for name in end}
        waits = self._waits()
        self.waited = {name: waits[name] - self._wait0.get(name, 0.0) for name in waits}

    def peak_rss(self, name: str) -> int:
        """The highest RSS sampled for `name`."""
        return max((s.rss.get(name, 0) for s in self.samples), default=0)

    def first_rss(self, name: str) -> int:
        """The RSS of `name` when the block started."""
        return self.samples[0].rss.get(name, 0) if self.samples else 0

    def last_rss(self, name: str) -> int:
        """The RSS of `name` when the block ended."""
        return self.samples[-1].rss.get(name, 0) if self.samples else 0

    def cpu_until(self, moment: float) -> dict[str, float]:
        """CPU seconds of each process from the start to the last sample at or before
        `moment` (a `time.monotonic()` reading, the same clock in every process): the part of
        a job before a phase its client timed, to within one sampling interval."""
        before = [s for s in self.samples if s.t <= moment - self._t0]
        cpu = before[-1].cpu if before else self._cpu0
        return {name: cpu.get(name, 0.0) - self._cpu0.get(name, 0.0) for name in self._cpu0}

    def timeline(self, name: str) -> list[tuple[float, int]]:
        """`(seconds, rss bytes)` samples of `name`."""
        return [(s.t, s.rss.get(name, 0)) for s in self.samples]
