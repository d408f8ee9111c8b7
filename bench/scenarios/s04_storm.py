"""Scenario 4: the disconnect storm."""

from __future__ import annotations

import random
import time
from typing import Any

from bench.harness import Context, Row, Scenario, Stack, Trial
from bench.jobs import TOKEN_TEXT, direct, expected_text, gateway
from bench.stats import mb, median, ratio
from martlet_molt.core.memory import FOLLOW_UP_SECONDS

SCENARIO = Scenario(4, "disconnect storm")
DELAY = 0.02  # 20 ms per token, as scenario 3


def run(ctx: Context) -> None:
    """Streams whose clients drop at random points; every reply must still be saved
    whole, and memory must come back once the finished logs' retention has passed. A second
    storm after that tells memory kept for reuse (flat) from memory leaked (growing)."""
    n, tokens = ctx.pick(100, 1000), 100
    retention, interval = ctx.pick(1.0, 3.0), ctx.pick(0.5, 1.0)
    settings = {
        "MARTLET_RUN_RETENTION_SECONDS": str(retention),
        "MARTLET_EVICTION_INTERVAL_SECONDS": str(interval),
    }
    expected = expected_text(TOKEN_TEXT, tokens)
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
        # The first eviction pass after retention releases memory, and again FOLLOW_UP later.
        follow_up = retention + 2 * interval + FOLLOW_UP_SECONDS + 2.0
        later = after if ctx.quick else _idle_until(stack, ended + follow_up, extend)
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
        "rss_after_follow_up": later,
        "rss_after_second": after_second,
        "streams": n,
        "tokens": tokens,
    }
    ctx.plots["storm"] = {"timeline": timeline, "marks": marks}
    _storm_rows(ctx, n, first, second, plain, (baseline, peak, after, after_second, later))


def _idle_until(stack: Stack, deadline: float, extend: Any) -> int:
    """Idle until `deadline` (here: the gateway's follow-up release has run and the storm's
    idle upstream keep-alives have closed); the RSS then."""
    samples = stack.idle(max(0.0, deadline - time.monotonic()))
    extend(samples, "follow-up")
    return int(median([rss for _, rss in samples[-5:]]))


def _storm_rows(
    ctx: Context, n: int, first: Trial, second: Trial, plain: Trial, rss: tuple[int, ...]
) -> None:
    baseline, peak, after, after_second, later = rss
    name = SCENARIO.label
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
    if not ctx.quick:
        ctx.add(
            Row(
                name,
                "RSS once the follow-up release ran, ~21 s after the storm (ratio = share "
                "of the storm's growth kept)",
                "MB",
                mb(later),
                "—",
                mb(baseline),
                ratio(later - baseline, peak - baseline),
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
