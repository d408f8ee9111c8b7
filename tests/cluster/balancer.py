"""nginx in front of gateway instances, run from the repository's own `deploy/nginx.conf`.

The template's two placeholders are filled exactly as scripts/cluster fills them (`@LISTEN@`,
`@UPSTREAM_SERVERS@`); nginx runs in the foreground (`daemon off`) with its prefix, pid file,
logs and temporary files in the test's directory, never the system's service.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from tests.databases import unavailable
from tests.process_gateway import free_port

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
START_TIMEOUT = 10.0
"""Seconds nginx may take to accept connections."""
STOP_TIMEOUT = 10.0


def find_nginx() -> str:
    """nginx on PATH or Debian's /usr/sbin/nginx; skip the test without it (fail under CI)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        unavailable("nginx is missing (apt-get install nginx-light; scripts/test does it)")
    return found


def render_config(*, listen: str, servers: Sequence[str]) -> str:
    """The repository's nginx.conf for this listen address and these `host:port` instances."""
    upstream = " ".join(f"server {server};" for server in servers)
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
