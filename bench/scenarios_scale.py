"""Many-stream scenarios: 3 concurrency, 4 disconnect storm."""

from __future__ import annotations

import random
import time
from typing import Any

from bench.harness import Context, Row, Stack, Trial
from bench.jobs import direct, expected_text, gateway
from bench.stats import mb, median, ratio, summary

TOKENS = 200
DELAY = 0.02
RSS_LIMIT_MB = 150


def _level(ctx: Context, streams: int, reps: int, *, targeted: bool) -> dict[str, Any]:
    """One concurrency level on a fresh stack: gateway and direct rounds alternating."""
    upstream = {"tokens": TOKENS, "delay": DELAY, "stamp": True}
    trials: dict[str, list[Trial]] = {"gateway": [], "direct": []}
    limit = 120 + streams * 0.2
    with Stack(ctx, f"concurrency-{streams}", upstream=upstream) as stack:
        targets = {
            "gateway": gateway(stack.port("gateway")),
            "direct": direct(stack.port("upstream")),
        }
        if not ctx.quick:  # warm-up: first-call costs out of the way
            stack.run(
                "concurrent",
                limit=60,
                target=targets["gateway"],
                streams=10,
                tokens=TOKENS,
                ramp=0.1,
                timeout=60,
            )
        idle_rss = stack.gateway.rss()
        for rep in range(reps):
            for name in ("gateway", "direct") if rep % 2 == 0 else ("direct", "gateway"):
                trials[name].append(
                    stack.run(
                        "concurrent",
                        limit=limit,
                        target=targets[name],
                        streams=streams,
                        tokens=TOKENS,
                        ramp=min(1.0, streams / 1000),
                        timeout=limit - 20,
                    )
                )
    return _level_figures(streams, trials, idle_rss, targeted)


def _level_figures(
    streams: int, trials: dict[str, list[Trial]], idle_rss: int, targeted: bool
) -> dict[str, Any]:
    def joined(name: str, key: str) -> list[float]:
        return [x for t in trials[name] for x in t.result[key]]

    gw_trials, up_trials = trials["gateway"], trials["direct"]
    total = streams * len(gw_trials)
    chunks = total * TOKENS
    return {
        "streams": streams,
        "targeted": targeted,
        "complete": sum(t.result["complete"] for t in gw_trials) / total,
        "saved": sum(t.result["saved_equal"] or 0 for t in gw_trials) / total,
        "direct_complete": sum(t.result["complete"] for t in up_trials) / total,
        "statuses": [t.result["statuses"] for t in gw_trials],
        "errors": [t.result["errors"] for t in gw_trials + up_trials],
        "gap_ms": {
            "gateway": summary(joined("gateway", "gaps"), 1000),
            "direct": summary(joined("direct", "gaps"), 1000),
        },
        "latency_ms": {
            "gateway": summary(joined("gateway", "latencies"), 1000),
            "direct": summary(joined("direct", "latencies"), 1000),
        },
        "ttft_ms": {
            "gateway": summary(joined("gateway", "ttfts"), 1000),
            "direct": summary(joined("direct", "ttfts"), 1000),
        },
        "rss_idle": idle_rss,
        "rss_peak": max(t.peak_rss["gateway"] for t in gw_trials),
        "gateway_cpu_us_per_chunk": sum(t.cpu["gateway"] for t in gw_trials) / chunks * 1e6,
        "gateway_cpu_util": median([t.cpu["gateway"] / t.wall for t in gw_trials]),
        "upstream_cpu_util_direct": median([t.cpu["upstream"] / t.wall for t in up_trials]),
        "upstream_cpu_util_gateway": median([t.cpu["upstream"] / t.wall for t in gw_trials]),
        "client_cpu_util": median([t.cpu["client"] / t.wall for t in gw_trials + up_trials]),
        "wall": {
            "gateway": median([t.wall for t in gw_trials]),
            "direct": median([t.wall for t in up_trials]),
        },
    }


def concurrency(ctx: Context) -> None:
    """Scenario 3: N concurrent streams of 200 tokens at 20 ms/token."""
    levels = ctx.pick([20, 80], [100, 500, 1000])
    # Two interleaved rounds each (gateway, direct, direct, gateway), one at 1,000 for time.
    found = [_level(ctx, n, ctx.pick(1, 1 if n >= 1000 else 2), targeted=n == 1000) for n in levels]
    ctx.raw["concurrency"] = found
    ctx.plots["concurrency"] = found
    for level in found:
        n, targeted = level["streams"], level["targeted"]
        name = "3 concurrency"
        both = min(level["complete"], level["saved"])
        ctx.add(
            Row(
                name,
                f"{n} streams: complete and saved",
                "%",
                both * 100,
                "100 %",
                level["direct_complete"] * 100,
                None,
                both == 1.0,
            )
        )
        for q in ("p50", "p99"):
            g, d = level["gap_ms"]["gateway"][q], level["gap_ms"]["direct"][q]
            added = g - d
            target = "≤ 20 ms" if targeted and q == "p99" else "—"
            passed = added <= 20 if target != "—" else None
            ctx.add(
                Row(
                    name,
                    f"{n} streams: added inter-token gap {q} (gateway − direct)",
                    "ms",
                    added,
                    target,
                    d,
                    ratio(g, d),
                    passed,
                )
            )
        lat_g, lat_d = level["latency_ms"]["gateway"]["p99"], level["latency_ms"]["direct"]["p99"]
        ctx.add(
            Row(
                name,
                f"{n} streams: token delivery latency p99 (send → arrival)",
                "ms",
                lat_g,
                "—",
                lat_d,
                ratio(lat_g, lat_d),
            )
        )
        peak = mb(level["rss_peak"])
        ctx.add(
            Row(
                name,
                f"{n} streams: gateway peak RSS (baseline = idle RSS)",
                "MB",
                peak,
                f"≤ {RSS_LIMIT_MB} MB" if targeted else "—",
                mb(level["rss_idle"]),
                ratio(peak, mb(level["rss_idle"])),
                peak <= RSS_LIMIT_MB if targeted else None,
            )
        )
        ctx.add(
            Row(
                name, f"{n} streams: gateway CPU per chunk", "µs", level["gateway_cpu_us_per_chunk"]
            )
        )


def storm(ctx: Context) -> None:
    """Scenario 4: streams whose clients drop at random points; every reply must still be saved
    whole, and memory must come back once the finished logs' retention has passed. A second
    storm after that tells memory kept for reuse (flat) from memory leaked (growing)."""
    n, tokens = ctx.pick(100, 1000), ctx.pick(100, TOKENS)
    retention, interval = ctx.pick(1.0, 3.0), ctx.pick(0.5, 1.0)
    settings = {
        "MARTLET_RUN_RETENTION_SECONDS": str(retention),
        "MARTLET_EVICTION_INTERVAL_SECONDS": str(interval),
    }
    expected = expected_text("tok{i} ", tokens)
    rng = random.Random(42)
    drops = [rng.randrange(0, tokens) for _ in range(n)]
    timeline: list[tuple[float, int]] = []
    marks: dict[str, float] = {}

    def extend(samples: list[tuple[float, int]], mark: str | None = None) -> None:
        offset = timeline[-1][0] if timeline else 0.0
        timeline.extend((offset + t, rss) for t, rss in samples)
        if mark:
            marks[mark] = timeline[-1][0]

    def settle(stack: Stack, since: float, mark: str) -> int:
        """Idle until retention and two eviction passes are over; the RSS then."""
        wait = max(0.0, retention + 2 * interval + 1.0 - (time.monotonic() - since))
        samples = stack.idle(wait)
        extend(samples, mark)
        return int(median([rss for _, rss in samples[-5:]]))

    upstream = {"tokens": tokens, "delay": DELAY}
    with Stack(ctx, "storm", upstream=upstream, gateway=settings) as stack:
        gw, up = gateway(stack.port("gateway")), direct(stack.port("upstream"))

        def hit(target: dict[str, Any], which: list[int]) -> Trial:
            limit = 300 + len(which) * 0.3
            return stack.run(
                "storm",
                limit=limit,
                target=target,
                drops=which,
                ramp=min(1.0, len(which) / 1000),
                expected=expected,
                timeout=limit - 20,
            )

        if not ctx.quick:
            hit(gw, drops[:20])  # warm-up
        baseline = settle(stack, time.monotonic(), "storm 1")
        first = hit(gw, drops)
        ended = time.monotonic()
        extend(first.timeline, "saved")
        plain = hit(up, drops)  # the gateway idles meanwhile: its logs expire
        extend([(0.0, stack.gateway.rss()), (plain.wall, stack.gateway.rss())])
        after = settle(stack, ended, "storm 2")
        second = hit(gw, drops)
        ended = time.monotonic()
        extend(second.timeline)
        after_second = settle(stack, ended, "end")
    peak = max(rss for _, rss in timeline)
    ctx.raw["storm"] = {
        "gateway": first.result,
        "gateway_second": second.result,
        "direct": plain.result,
        "rss_baseline": baseline,
        "rss_peak": peak,
        "rss_after": after,
        "rss_after_second": after_second,
        "streams": n,
        "tokens": tokens,
    }
    ctx.plots["storm"] = {"timeline": timeline, "marks": marks}
    _storm_rows(ctx, n, first, second, plain, (baseline, peak, after, after_second))


def _storm_rows(
    ctx: Context, n: int, first: Trial, second: Trial, plain: Trial, rss: tuple[int, ...]
) -> None:
    baseline, peak, after, after_second = rss
    name = "4 disconnect storm"
    for label, trial in (("first storm", first), ("second storm", second)):
        saved = trial.result.get("saved_equal", 0)
        ctx.add(
            Row(
                name,
                f"{label}: replies saved equal to what the upstream sent (baseline = "
                "direct replies read in full with the same drops)",
                "replies",
                saved,
                f"{n} / {n}",
                plain.result["read_in_full"],
                None,
                saved == n,
            )
        )
    ctx.add(
        Row(
            name,
            "gateway peak RSS (baseline = idle before the storm)",
            "MB",
            mb(peak),
            "—",
            mb(baseline),
            ratio(peak, baseline),
        )
    )
    kept = ratio(after - baseline, peak - baseline)
    ctx.add(
        Row(
            name,
            "RSS after retention (ratio = share of the storm's growth kept)",
            "MB",
            mb(after),
            "≤ 25 % of growth kept",
            mb(baseline),
            kept,
            kept <= 0.25,
        )
    )
    ctx.add(
        Row(
            name,
            "RSS after a second storm and retention (baseline = after the first)",
            "MB",
            mb(after_second),
            "—",
            mb(after),
            ratio(after_second, after),
        )
    )
