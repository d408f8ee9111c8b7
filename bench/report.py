"""The results: a JSON file with everything, and a markdown table of every metric."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench.harness import Context, Row

PACKAGES = ("uvicorn", "uvloop", "httptools", "starlette", "fastapi", "openai", "aiohttp",
            "httpx", "sqlalchemy", "asyncpg", "pydantic")  # fmt: skip


def machine() -> dict[str, Any]:
    """What the suite ran on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
    }


def source_state() -> dict[str, str]:
    """The commit checked out and a digest of the gateway's source (`src/`), to tell which code
    a result belongs to and whether it changed while the suite ran."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted((root / "src").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"commit": commit or "unknown", "src_sha256": digest.hexdigest()[:16]}


def _clean(value: Any) -> Any:
    """NaN to None, recursively, so the JSON is standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}  # pyright: ignore[reportUnknownVariableType]
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]  # pyright: ignore[reportUnknownVariableType]
    return value


def write_json(ctx: Context, path: Path, info: dict[str, Any]) -> None:
    """Everything measured, in one JSON file."""
    payload = {
        **info,
        "rows": [row.to_dict() for row in ctx.rows],
        "scenarios": ctx.raw,
        "profiles": ctx.profiles,
        "timings_s": ctx.timings,
        "trials": ctx.trials,
    }
    path.write_text(json.dumps(_clean(payload), indent=1, default=str))


def fmt(value: float | None) -> str:
    """A number with about three significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _verdict(row: Row) -> str:
    mark = "" if row.passed is None else ("✅" if row.passed else "❌ miss")
    return f"{mark} {row.note}".strip() if row.note else mark


def table(rows: list[Row]) -> str:
    """The markdown table of every row."""
    lines = [
        "| scenario | metric | target | measured | baseline | ratio | |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        measured = f"{fmt(row.measured)} {row.unit}"
        baseline = f"{fmt(row.baseline)} {row.unit}" if row.baseline is not None else "—"
        ratio = fmt(row.ratio) if row.ratio is not None else "—"
        lines.append(
            f"| {row.scenario} | {row.metric} | {row.target or '—'} | {measured} | {baseline} "
            f"| {ratio} | {_verdict(row)} |"
        )
    return "\n".join(lines)


def profile_section(profiles: dict[str, Any]) -> str:
    """Top hot spots of each profiled stack."""
    out: list[str] = []
    for name, runs in profiles.items():
        for prof in runs:
            out.append(f"### Profile: {name}")
            if "error" in prof:
                out.append(f"\n{prof['error']}\n")
                continue
            out.append(f"\n{prof['samples']} samples.\n")
            for key, title in (
                ("self_packages", "Self time by package/module"),
                ("self_functions", "Self time by function"),
                ("inclusive_martlet", "Inclusive time, martlet_molt functions"),
            ):
                out.append(f"{title}:\n")
                out.extend(f"- {share * 100:.1f} % `{what}`" for what, share in prof[key])
                out.append("")
    return "\n".join(out)


def contention(trials: list[dict[str, Any]]) -> str:
    """Per stack: the 1-minute load average and the share of wall time the gateway (and the
    upstream) spent runnable but waiting for a CPU, a sign of other load on the machine."""
    lines = [
        "| stack | jobs | max load avg (1 min) | gateway CPU / wall "
        "| gateway run-queue wait / wall | upstream run-queue wait / wall |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    stacks: dict[str, list[dict[str, Any]]] = {}
    for trial in trials:
        stacks.setdefault(trial["stack"], []).append(trial)
    for name, group in stacks.items():
        wall = sum(t["wall"] for t in group) or 1.0

        def share(key: str, proc: str, group: list[dict[str, Any]] = group, wall: float = wall):
            return f"{sum(t[key].get(proc, 0.0) for t in group) / wall * 100:.0f} %"

        load = max(t["loadavg_1m"] for t in group)
        lines.append(
            f"| {name} | {len(group)} | {load:.1f} | {share('cpu', 'gateway')} "
            f"| {share('run_queue_wait', 'gateway')} | {share('run_queue_wait', 'upstream')} |"
        )
    return "\n".join(lines)


def write_markdown(ctx: Context, path: Path, info: dict[str, Any], plots: list[Path]) -> None:
    """The human-readable report: machine, command, table, plots, profiles."""
    m = info["machine"]
    misses = [r for r in ctx.rows if r.passed is False]
    parts = [
        f"# Benchmark results ({info['mode']}, {info['started']})",
        "",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}",
        f"- Command: `{info['command']}`; took {info['elapsed_s']:.0f} s",
        f"- Code: commit {info['source']['commit']}, src digest {info['source']['src_sha256']}"
        + (
            ""
            if info["source"]["src_sha256"] == info["source_at_end"]["src_sha256"]
            else " — **src/ changed while the suite ran: results mix two versions**"
        ),
        f"- Targets missed: {len(misses)} of {sum(r.passed is not None for r in ctx.rows)}",
        "",
        table(ctx.rows),
        "",
    ]
    if info.get("failures"):
        parts += ["## Scenarios that failed to run", ""]
        parts += [f"- {name}: {err}" for name, err in info["failures"].items()]
        parts.append("")
    if ctx.trials:
        parts += ["## How busy the machine was", "", contention(ctx.trials), ""]
    if plots:
        parts += ["## Plots", ""]
        parts += [f"![{p.stem}]({os.path.relpath(p, path.parent)})" for p in plots]
        parts.append("")
    if ctx.profiles:
        parts += ["## Profiles", "", profile_section(ctx.profiles)]
    path.write_text("\n".join(parts) + "\n")
