"""Scenario 6: resume. Reconnects with `Last-Event-ID` to live runs, to finished runs held in
memory, and to finished runs evicted to the store: time to the first replayed event."""

from __future__ import annotations

from typing import Any

from bench.harness import Context, Row, Scenario, Stack
from bench.stats import median, ratio, summary

SCENARIO = Scenario(6, "resume")


def run(ctx: Context) -> None:
    """Four runs, then reconnects at random points while they stream, after they ended, and
    after their logs were evicted. The baseline is a fresh direct request's time to its first
    token (what re-asking the upstream costs at best, with first-token delay 0)."""
    retention, interval = ctx.pick(2.0, 5.0), 1.0
    settings = {
        "MARTLET_RUN_RETENTION_SECONDS": str(retention),
        "MARTLET_EVICTION_INTERVAL_SECONDS": str(interval),
    }
    upstream = {"tokens": ctx.pick(200, 600), "delay": 0.01}
    with Stack(ctx, "resume", upstream=upstream, gateway=settings) as stack:
        trial = stack.run(
            "resume",
            limit=180,
            gateway_port=stack.port("gateway"),
            direct_port=stack.port("upstream"),
            runs=4,
            samples=ctx.pick(30, 200),
            evict_wait=retention + 2.5 * interval,
            timeout=60,
        )
    result = trial.result
    phases = {
        "live": "live run",
        "finished": "finished run (in memory)",
        "evicted": "finished run (from the store)",
    }
    found: dict[str, Any] = {}
    for phase, label in phases.items():
        data = result[phase]
        g, d = summary(data["gateway"], 1000), summary(data["direct"], 1000)
        found[phase] = {"gateway": g, "direct": d, "wrong": data["wrong"], "label": label}
        for q in ("p50", "p99"):
            target = "≤ 5 ms" if q == "p50" and phase != "evicted" else "—"
            ctx.add(
                Row(
                    SCENARIO.label,
                    f"{label}: time to first replayed event {q}",
                    "ms",
                    g[q],
                    target,
                    d[q],
                    ratio(g[q], d[q]),
                    (g[q] <= 5 and data["wrong"] == 0) if target != "—" else None,
                )
            )
    found["tails_complete"] = result["tails_complete"]
    ctx.raw["resume"] = found
    ctx.plots["resume"] = found
    ctx.raw["resume_medians"] = {p: median(result[p]["gateway"]) for p in phases}
