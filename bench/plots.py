"""PNG plots of the curves (matplotlib, Agg backend, small files)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

DPI = 80
GW, DIRECT, PT = "tab:red", "tab:blue", "tab:green"


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _cdf(ax: Axes, values: list[float], label: str, color: str) -> None:
    ordered = sorted(v * 1000 for v in values)
    n = len(ordered)
    ax.plot(ordered, [(i + 1) / n for i in range(n)], label=label, color=color)


def ttft(data: dict[str, Any], path: Path) -> Path:
    """CDF of time to first token, gateway vs direct."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    _cdf(ax, data["gateway"], "gateway", GW)
    _cdf(ax, data["direct"], "direct to upstream", DIRECT)
    ax.set(xlabel="time to first token (ms)", ylabel="fraction of requests", title="1 TTFT")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def relay(data: dict[str, Any], path: Path) -> Path:
    """Per-chunk CPU and throughput: gateway, pass-through, direct."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.2))
    names = ["gateway", "passthrough"]
    left.bar(names, [data[n]["cpu_us_per_chunk"] for n in names], color=[GW, PT])
    left.set(ylabel="server CPU µs per chunk", title="2 CPU per chunk")
    left.axhline(40, color="k", ls="--", lw=1, label="target 40 µs")
    left.legend(fontsize=8)
    names = ["gateway", "passthrough", "direct"]
    right.bar(names, [data[n]["tokens_per_s"] for n in names], color=[GW, PT, DIRECT])
    right.set(ylabel="tokens/s (20,000-token stream)", title="2 relay throughput")
    return _save(fig, path)


def concurrency(levels: list[dict[str, Any]], path: Path) -> Path:
    """Gaps and delivery latency vs concurrent streams, and gateway RSS."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4))
    xs = [lv["streams"] for lv in levels]
    for who, color in (("gateway", GW), ("direct", DIRECT)):
        for q, style in (("p50", "-"), ("p99", "--")):
            ys = [lv["gap_ms"][who][q] for lv in levels]
            left.plot(xs, ys, style, marker="o", color=color, label=f"{who} gap {q}")
    left.axhline(20, color="k", lw=0.8, ls=":")
    left.set(xlabel="concurrent streams", ylabel="inter-token gap (ms)", title="3 concurrency")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    right.plot(xs, [lv["rss_peak"] / 2**20 for lv in levels], marker="o", color=GW, label="peak")
    right.plot(xs, [lv["rss_idle"] / 2**20 for lv in levels], marker="o", color="gray",
               label="idle")  # fmt: skip
    right.axhline(150, color="k", ls="--", lw=1, label="target 150 MB")
    right.set(xlabel="concurrent streams", ylabel="gateway RSS (MB)", title="gateway memory")
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    return _save(fig, path)


def storm(data: dict[str, Any], path: Path) -> Path:
    """Gateway RSS through the disconnect storm and the retention period."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ts = [t for t, _ in data["timeline"]]
    ax.plot(ts, [r / 2**20 for _, r in data["timeline"]], color=GW)
    for label, t in data["marks"].items():
        ax.axvline(t, color="gray", ls=":", lw=1)
        ax.text(t, ax.get_ylim()[1], label, fontsize=7, rotation=90, va="top")
    ax.set(xlabel="seconds", ylabel="gateway RSS (MB)", title="4 disconnect storm")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def fanout(levels: list[dict[str, Any]], path: Path) -> Path:
    """Delivery latency and CPU per delivered event vs readers."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.3))
    xs = [lv["readers"] for lv in levels]
    for who, color in (("gateway", GW), ("direct", DIRECT)):
        for q, style in (("p50", "-"), ("p99", "--")):
            ys = [lv["latency_ms"][who][q] for lv in levels]
            left.plot(xs, ys, style, marker="o", color=color, label=f"{who} {q}")
    left.set(xscale="log", xlabel="readers", ylabel="delivery latency (ms)", title="5 fan-out")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    right.plot(xs, [lv["gateway_cpu_us_per_event"] for lv in levels], marker="o", color=GW)
    right.set(xscale="log", xlabel="readers", ylabel="gateway CPU µs / delivered event")
    right.grid(alpha=0.3)
    return _save(fig, path)


def resume(data: dict[str, Any], path: Path) -> Path:
    """Time to first replayed event per phase, vs a fresh direct request."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    phases = ["live", "finished", "evicted"]
    xs = range(len(phases))
    for offset, (who, color) in ((-0.2, ("gateway", GW)), (0.2, ("direct", DIRECT))):
        p50 = [data[p][who]["p50"] for p in phases]
        p99 = [data[p][who]["p99"] for p in phases]
        ax.bar([x + offset for x in xs], p99, width=0.38, color=color, alpha=0.35)
        ax.bar(
            [x + offset for x in xs], p50, width=0.38, color=color, label=f"{who} p50 (p99 pale)"
        )
    ax.set_xticks(list(xs), phases)
    ax.axhline(5, color="k", ls="--", lw=1)
    ax.set(ylabel="time to first event (ms)", title="6 resume with Last-Event-ID")
    ax.legend(fontsize=7)
    return _save(fig, path)


def long_replies(data: dict[str, Any], path: Path) -> Path:
    """Time per chunk along the reply, and gateway RSS during it."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.3))
    for size, runs in data.items():
        label = f"{int(size) / 1e6:g} MB"
        for who, style in (("gateway", "-"), ("direct", "--")):
            left.plot(
                range(1, 11), runs[who]["deciles_us"], style, marker=".", label=f"{label} {who}"
            )
        timeline = runs["gateway"]["timeline"]
        right.plot([t for t, _ in timeline], [r / 2**20 for _, r in timeline], label=label)
    left.set(
        xlabel="tenth of the reply", ylabel="µs per chunk", title="7 long replies", ylim=(0, None)
    )
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    right.set(xlabel="seconds (gateway stream)", ylabel="gateway RSS (MB)")
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    return _save(fig, path)


PLOTS: dict[str, Callable[[Any, Path], Path]] = {
    "ttft": ttft,
    "relay": relay,
    "concurrency": concurrency,
    "storm": storm,
    "fanout": fanout,
    "resume": resume,
    "long": long_replies,
}


def draw_all(data: dict[str, Any], directory: Path) -> list[Path]:
    """Every plot whose data exists; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, draw in PLOTS.items():
        if name in data:
            try:
                written.append(draw(data[name], directory / f"{name}.png"))
            except Exception as exc:  # a plot must not sink the results
                print(f"plot {name} failed: {exc!r}")
    return written
