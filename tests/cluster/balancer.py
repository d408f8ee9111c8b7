"""nginx in front of gateway instances, run from the repository's own `deploy/nginx.conf`.

The template's two placeholders are filled exactly as scripts/cluster fills them (`@LISTEN@`,
`@UPSTREAM_SERVERS@`); nginx runs in the foreground (`daemon off`) with its prefix, pid file,
logs and temporary files in the test's directory, never the system's service.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from tests.databases import unavailable
from tests.process_gateway import free_port

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
START_TIMEOUT = 10.0
"""Seconds nginx may take to accept connections."""
STOP_TIMEOUT = 10.0
LOG_TIMEOUT = 5.0
"""Seconds nginx may take to write a finished request's access log line."""
MAX_STEERING_PROBES = 8

_ACCESS_LINE = re.compile(
    r'^\S+ \[[^\]]*\] "(?P<method>\S+) (?P<target>\S+) [^"]*" (?P<status>\d{3}) \d+ '
    r"upstream=(?P<upstream>.*) (?P<upstream_status>\S+(?:, \S+)*) \S+s$"
)


@dataclass(frozen=True)
class AccessEntry:
    """One finished request in nginx's access log (deploy/nginx.conf's `martlet` format)."""

    method: str
    target: str
    status: int
    upstreams: tuple[str, ...]
    """Every instance nginx tried, in order (`host:port`); the last one answered."""

    @property
    def upstream(self) -> str:
        """The instance that answered."""
        return self.upstreams[-1]


def find_nginx() -> str:
    """nginx on PATH or Debian's /usr/sbin/nginx; skip the test without it (fail under CI)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        unavailable("nginx is missing (apt-get install nginx-light; scripts/test does it)")
    return found


def render_config(*, listen: str, servers: Sequence[str]) -> str:
    """The repository's nginx.conf for this listen address and these `host:port` instances."""
    upstream = " ".join(f"server {server} max_fails=0;" for server in servers)
    return TEMPLATE.read_text().replace("@LISTEN@", listen).replace("@UPSTREAM_SERVERS@", upstream)


class Balancer:
    """One nginx (master and workers) on a free loopback port."""

    def __init__(self, directory: Path, servers: Sequence[str]) -> None:
        self.directory = directory
        self.port = free_port()
        (directory / "logs").mkdir(parents=True, exist_ok=True)
        (directory / "tmp").mkdir(exist_ok=True)
        self.config_path = directory / "nginx.conf"
        self.config_path.write_text(render_config(listen=f"127.0.0.1:{self.port}", servers=servers))
        self._command = [
            find_nginx(),
            "-p",
            str(directory),
            "-c",
            str(self.config_path),
            "-e",
            str(directory / "logs" / "error.log"),
        ]
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Root URL of the balancer."""
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        """What nginx logged (errors and warnings)."""
        with contextlib.suppress(OSError):
            return (self.directory / "logs" / "error.log").read_text(errors="replace")
        return ""

    def access_log(self) -> list[AccessEntry]:
        """Every request nginx has finished so far (a stream is logged when it ends)."""
        try:
            lines = (self.directory / "logs" / "access.log").read_text(errors="replace")
        except FileNotFoundError:
            return []
        entries: list[AccessEntry] = []
        for line in lines.splitlines():
            match = _ACCESS_LINE.match(line)
            assert match is not None, f"unexpected access log line: {line!r}"
            entries.append(
                AccessEntry(
                    method=match["method"],
                    target=match["target"],
                    status=int(match["status"]),
                    upstreams=tuple(match["upstream"].split(", ")),
                )
            )
        return entries

    def served(self, target: str, count: int = 1) -> list[AccessEntry]:
        """The access log entries of the `count` requests for exactly `target`, in the order
        they finished (bounded wait: nginx writes a line just after its response ends)."""
        deadline = time.monotonic() + LOG_TIMEOUT
        while True:
            found = [entry for entry in self.access_log() if entry.target == target]
            if len(found) >= count:
                assert len(found) == count, found
                return found
            assert time.monotonic() < deadline, f"{len(found)} access log lines for {target}"
            time.sleep(0.01)

    def steer_next_to(self, server: str) -> None:
        """Make round robin send nginx's next request to `server` (`host:port`), with two
        instances: probe `/healthz` until a probe was answered by the other one. Nothing else
        may send requests through nginx meanwhile."""
        with httpx.Client(base_url=self.url, timeout=STOP_TIMEOUT) as client:
            for _ in range(MAX_STEERING_PROBES):
                target = f"/healthz?probe={uuid.uuid4().hex}"
                assert client.get(target).status_code == 200
                if self.served(target)[0].upstream != server:
                    return
        raise AssertionError(f"nginx sent {MAX_STEERING_PROBES} probes in a row to {server}")

    def start(self) -> Balancer:
        """Check the configuration, start nginx, and return once it accepts connections."""
        checked = subprocess.run(
            [*self._command, "-t", "-q"], capture_output=True, text=True, timeout=STOP_TIMEOUT
        )
        assert checked.returncode == 0, f"nginx -t: {checked.stderr}\n{self.error_log()}"
        self._popen = subprocess.Popen(
            [*self._command, "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            code = self._popen.poll()
            assert code is None, f"nginx exited with {code}:\n{self.error_log()}"
            if _accepts(self.port):
                return self
            assert time.monotonic() < deadline, f"nginx did not listen:\n{self.error_log()}"
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (nginx's fast shutdown) and reap; SIGKILL if it lingers."""
        if self._popen is None or self._popen.poll() is not None:
            return
        self._popen.terminate()
        try:
            self._popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait(STOP_TIMEOUT)

    def __enter__(self) -> Balancer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False
