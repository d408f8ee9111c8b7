"""Scenarios about one run and many readers: 5 fan-out, 6 resume."""

from __future__ import annotations

from typing import Any

from bench.harness import Context, Row, Stack, Trial
from bench.jobs import direct, gateway
from bench.stats import median, ratio, summary


def fanout(ctx: Context) -> None:
    """Scenario 5: one run read by 1, 10 and 100 concurrent readers (direct: as many separate
    upstream streams): per-reader delivery latency and gateway CPU per delivered event."""
    levels = ctx.pick([1, 10, 30], [1, 10, 100])
    reps = ctx.pick(1, 2)
    tokens = ctx.pick(100, 300)
    upstream = {"tokens": tokens, "delay": 0.01, "first_delay": 0.3, "stamp": True}
    found: list[dict[str, Any]] = []
    with Stack(ctx, "fanout", upstream=upstream) as stack:
        targets = {
            "gateway": gateway(stack.port("gateway")),
            "direct": direct(stack.port("upstream")),
        }
        stack.run("fanout", limit=60, target=targets["gateway"], readers=2, timeout=30)
        for readers in levels:
            trials: dict[str, list[Trial]] = {"gateway": [], "direct": []}
            for rep in range(reps):
                for name in ("gateway", "direct") if rep % 2 == 0 else ("direct", "gateway"):
                    trial = stack.run(
                        "fanout", limit=120, target=targets[name], readers=readers, timeout=90
                    )
                    trials[name].append(trial)
            found.append(_figures(readers, trials))
    ctx.raw["fanout"] = found
    ctx.plots["fanout"] = found
    for level in found:
        n = level["readers"]
        g, d = level["latency_ms"]["gateway"], level["latency_ms"]["direct"]
        for q in ("p50", "p99"):
            ctx.add(
                Row(
                    "5 fan-out",
                    f"{n} readers: delivery latency {q} (upstream send → reader)",
                    "ms",
                    g[q],
                    "—",
                    d[q],
                    ratio(g[q], d[q]),
                )
            )
        ctx.add(
            Row(
                "5 fan-out",
                f"{n} readers: gateway CPU per delivered event (baseline = upstream's)",
                "µs",
                level["gateway_cpu_us_per_event"],
                "—",
                level["upstream_cpu_us_per_event"],
                ratio(level["gateway_cpu_us_per_event"], level["upstream_cpu_us_per_event"]),
            )
        )
        ctx.add(
            Row(
                "5 fan-out",
                f"{n} readers: readers that got every event",
                "%",
                level["complete"] * 100,
                "100 %",
                None,
                None,
                level["complete"] == 1.0,
            )
        )


def _figures(readers: int, trials: dict[str, list[Trial]]) -> dict[str, Any]:
    def joined(name: str) -> list[float]:
        return [x for t in trials[name] for x in t.result["latencies"]]

    gw, up = trials["gateway"], trials["direct"]
    delivered_gw = sum(t.result["delivered"] for t in gw)
    delivered_up = sum(t.result["delivered"] for t in up)
    return {
        "readers": readers,
        "latency_ms": {
            "gateway": summary(joined("gateway"), 1000),
            "direct": summary(joined("direct"), 1000),
        },
        "reader_median_spread_ms": [
            (min(t.result["reader_medians"]) * 1000, max(t.result["reader_medians"]) * 1000)
            for t in gw
            if t.result["reader_medians"]
        ],
        "complete": sum(t.result["complete"] for t in gw) / (readers * len(gw)),
        "delivered": delivered_gw,
        "gateway_cpu_us_per_event": sum(t.cpu["gateway"] for t in gw) / max(delivered_gw, 1) * 1e6,
        "upstream_cpu_us_per_event": sum(t.cpu["upstream"] for t in up)
        / max(delivered_up, 1)
        * 1e6,
        "errors": [t.result["errors"] for t in gw + up if t.result["errors"]],
    }


def resume(ctx: Context) -> None:
    """Scenario 6: reconnect with `Last-Event-ID` to live runs, to finished runs held in memory,
    and to finished runs evicted to the store: time to the first replayed event. The baseline
    is a fresh direct request's time to its first token (what re-asking the upstream costs
    at best, with first-token delay 0)."""
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
                    "6 resume",
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
