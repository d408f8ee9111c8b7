"""Scenario 1: the time to first token the gateway adds, short replies one at a time, the
upstream's first-token delay 0."""

from __future__ import annotations

from bench.harness import Context, Row, Scenario, Stack
from bench.stats import ratio, summary

SCENARIO = Scenario(1, "time to first token")


def run(ctx: Context) -> None:
    """Sequential short replies through the gateway and directly, after a warm-up."""
    count = ctx.pick(40, 300)
    with Stack(ctx, "ttft", upstream={"tokens": 3}) as stack:
        trial = stack.run(
            "ttft",
            limit=240,
            gateway_port=stack.port("gateway"),
            direct_port=stack.port("upstream"),
            count=count,
            warmup=ctx.pick(10, 20),
        )
    result = trial.result
    if result["error_count"]:
        raise RuntimeError(f"ttft had errors: {result['errors']}")
    gw, up = summary(result["gateway"], 1000), summary(result["direct"], 1000)
    hdr = summary(result["gateway_hdr"], 1000)
    ctx.raw["ttft"] = {"gateway": gw, "direct": up, "gateway_headers": hdr, "count": count}
    ctx.plots["ttft"] = {"gateway": result["gateway"], "direct": result["direct"]}
    for q, limit in (("p50", 2.0), ("p99", 10.0)):
        added = gw[q] - up[q]
        ctx.add(
            Row(
                SCENARIO.label,
                f"added TTFT {q} (measured = gateway − direct)",
                "ms",
                added,
                f"≤ {limit:g} ms",
                up[q],
                ratio(gw[q], up[q]),
                added <= limit,
            )
        )
