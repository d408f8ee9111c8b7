"""Scenario 5: fan-out. One run read by 1, 10 and 100 concurrent readers (direct: as many
separate upstream streams): per-reader delivery latency and gateway CPU per delivered event."""

from __future__ import annotations

from typing import Any

from bench.harness import Context, Row, Scenario, Stack, Trial
from bench.jobs import direct, gateway
from bench.stats import ratio, summary

SCENARIO = Scenario(5, "fan-out")


def run(ctx: Context) -> None:
    """Each level of readers twice, gateway and direct taking turns, after a warm-up."""
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
                    SCENARIO.label,
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
                SCENARIO.label,
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
                SCENARIO.label,
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
