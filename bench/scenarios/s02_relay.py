"""Scenario 2: relay throughput. One long stream at 0 delay through the gateway, through a
plain pass-through proxy (`bench/passthrough.py`, the least any relay does) and straight from
the upstream, interleaved: tokens/s and server CPU per chunk of each."""

from __future__ import annotations

from bench.harness import Context, Row, Scenario, Stack
from bench.jobs import TOKEN_TEXT, direct, expected_text, gateway
from bench.stats import median, ratio

SCENARIO = Scenario(2, "relay throughput")


def run(ctx: Context) -> None:
    """One 20,000-token stream at 0 delay, through the gateway, through a plain pass-through
    proxy, and straight from the upstream, interleaved."""
    tokens = ctx.pick(5_000, 20_000)
    reps = ctx.pick(1, 3)
    expected = expected_text(TOKEN_TEXT, tokens)
    per: dict[str, list[dict[str, float]]] = {"gateway": [], "passthrough": [], "direct": []}
    with Stack(ctx, "relay", upstream={"tokens": tokens}, passthrough=True) as stack:
        targets = {
            "gateway": gateway(stack.port("gateway")),
            "passthrough": direct(stack.port("passthrough")),
            "direct": direct(stack.port("upstream")),
        }
        stack.run("stream", limit=60, target=targets["gateway"], expected=expected)  # warm-up
        names = list(targets)
        for rep in range(reps):
            order = names[rep % 3 :] + names[: rep % 3]
            for name in order:
                trial = stack.run("stream", limit=180, target=targets[name], expected=expected)
                result = trial.result
                if result["error"] or not result["text_ok"]:
                    raise RuntimeError(f"relay via {name} failed: {result}")
                server = name if name != "direct" else "upstream"
                per[name].append(
                    {
                        "tokens_per_s": result["events"] / result["duration"],
                        "cpu_us_per_chunk": trial.cpu[server] / tokens * 1e6,
                        "upstream_cpu_us_per_chunk": trial.cpu["upstream"] / tokens * 1e6,
                        "client_cpu_us_per_chunk": trial.cpu["client"] / tokens * 1e6,
                        "saved_ok": float(bool(result["saved_ok"])) if name == "gateway" else 1,
                        "wall": trial.wall,
                    }
                )
    med = {
        name: {key: median([t[key] for t in trials]) for key in trials[0]}
        for name, trials in per.items()
    }
    ctx.raw["relay"] = {"trials": per, "medians": med, "tokens": tokens}
    ctx.plots["relay"] = med
    gw, pt, up = med["gateway"], med["passthrough"], med["direct"]
    ctx.add(
        Row(
            SCENARIO.label,
            "server CPU per chunk: gateway (direct = pass-through proxy)",
            "µs",
            gw["cpu_us_per_chunk"],
            "—",
            pt["cpu_us_per_chunk"],
            ratio(gw["cpu_us_per_chunk"], pt["cpu_us_per_chunk"]),
        )
    )
    ctx.add(
        Row(
            SCENARIO.label,
            "pass-through proxy throughput (direct = upstream)",
            "tokens/s",
            pt["tokens_per_s"],
            "—",
            up["tokens_per_s"],
            ratio(pt["tokens_per_s"], up["tokens_per_s"]),
        )
    )
    tput = ratio(gw["tokens_per_s"], up["tokens_per_s"])
    ctx.add(
        Row(
            SCENARIO.label,
            f"tokens/s, one {tokens:,}-token stream",
            "tokens/s",
            gw["tokens_per_s"],
            "≥ 50 % of direct",
            up["tokens_per_s"],
            tput,
            tput >= 0.5,
        )
    )
    ctx.add(
        Row(
            SCENARIO.label,
            "gateway CPU per chunk",
            "µs",
            gw["cpu_us_per_chunk"],
            "≤ 40 µs",
            None,
            None,
            gw["cpu_us_per_chunk"] <= 40,
        )
    )
    ctx.add(
        Row(
            SCENARIO.label,
            "reply saved equal to what the upstream sent",
            "fraction",
            gw["saved_ok"],
            "1",
            None,
            None,
            gw["saved_ok"] == 1,
        )
    )
