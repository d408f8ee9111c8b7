"""Sampling profiles of the gateway with py-spy (`--profile`), summarised by function and by
package: where the gateway's CPU time goes."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::\d+)?\)$")
_IDLE = {"select", "poll", "epoll_wait", "run_once", "_run_once", "wait", "_worker", "run"}


def _py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def _area(path: str) -> str:
    """`martlet_molt/core/runs.py` -> `martlet_molt.core.runs`; a library -> its package."""
    parts = path.replace("\\", "/").split("/")
    if "martlet_molt" in parts:
        rest = parts[parts.index("martlet_molt") :]
        return ".".join(rest).removesuffix(".py")
    for marker in ("site-packages", "lib"):
        if marker in parts:
            parts = parts[parts.index(marker) + 1 :]
    head = parts[0] if parts else path
    return head.removesuffix(".py") or path


def _frame(text: str) -> tuple[str, str]:
    match = _FRAME.match(text.strip())
    if match is None:
        return text.strip(), ""
    return match["func"], match["file"]


def summarise(raw: str, top: int = 20) -> dict[str, Any]:
    """Self and inclusive sample counts by function and by package from py-spy's raw
    (collapsed-stack) output."""
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    self_area: Counter[str] = Counter()
    incl_area: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        func, path = frames[-1]
        if func in _IDLE and ("selectors" in path or "threading" in path or not path):
            continue  # a thread waiting is not work
        total += count
        self_fn[f"{func} ({path})"] += count
        self_area[_area(path)] += count
        for name in {f"{f} ({p})" for f, p in frames}:
            incl_fn[name] += count
        for area in {_area(p) for _, p in frames if p}:
            incl_area[area] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, n / total) for name, n in counter.most_common(top)] if total else []

    # Entry points (the CLI, uvicorn's loop) are in every stack: leave them out.
    martlet = Counter(
        {
            k: v
            for k, v in incl_fn.items()
            if "martlet_molt" in k and "cli.py" not in k and "__main__" not in k
        }
    )
    return {
        "samples": total,
        "self_functions": share(self_fn),
        "self_packages": share(self_area),
        "inclusive_packages": share(incl_area),
        "inclusive_martlet": share(martlet),
    }


class Profiler:
    """`py-spy record` attached to a running process until `stop`."""

    def __init__(self, pid: int, output: Path, rate: int = 250) -> None:
        self.pid = pid
        self.output = output
        self.rate = rate
        self._popen: subprocess.Popen[bytes] | None = None
        self.error: str | None = None

    def start(self) -> None:
        """Attach py-spy (a missing py-spy is reported in the summary, not raised)."""
        exe = _py_spy()
        if exe is None:
            self.error = "py-spy is not installed (pip install py-spy)"
            return
        # --gil: only the thread holding the GIL, i.e. Python work (not threads waiting).
        cmd = [exe, "record", "--pid", str(self.pid), "--format", "raw", "--gil"]
        cmd += ["--rate", str(self.rate)]
        cmd += ["--output", str(self.output)]
        log = self.output.with_suffix(".log").open("wb")
        self._popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def stop(self) -> dict[str, Any]:
        """Detach py-spy and summarise what it saw."""
        if self._popen is None:
            return {"error": self.error or "not started"}
        self._popen.send_signal(signal.SIGINT)
        try:
            self._popen.wait(30)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait(5)
        if not self.output.exists():
            log = self.output.with_suffix(".log")
            return {"error": f"py-spy wrote nothing: {log.read_text(errors='replace')[-500:]}"}
        return summarise(self.output.read_text(errors="replace"))
