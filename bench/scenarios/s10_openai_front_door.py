"""Scenario 10: OpenAI's streaming APIs (`/v1/responses`, `/v1/chat/completions`) beside the
native `/chat/stream`, on one gateway process and one fake upstream, so the three share every
cost but their request handling and wire format: the time to first token each adds over the
native API, and the gateway's CPU per relayed chunk (measured as scenario 2 does)."""

from __future__ import annotations

from typing import Any

from bench.harness import Context, Row, Scenario, Stack
from bench.jobs import TOKEN_TEXT, expected_text
from bench.jobs_openai import APIS
from bench.stats import median, ratio, summary
from martlet_molt.testing import SHORT_REPLY_TOKENS

SCENARIO = Scenario(10, "OpenAI front door vs native")
PATHS = {
    "native": "`/chat/stream`",
    "responses": "`/v1/responses`",
    "chat": "`/v1/chat/completions`",
}
TTFT_LIMIT_MS = 1.0
CPU_LIMIT = 1.5  # × native's CPU per chunk


def run(ctx: Context) -> None:
    """First the sequential short replies (time to first token), then rounds of
    concurrent long replies at 0 delay (CPU per chunk), the APIs taking turns in both."""
    count, warmup = ctx.pick(30, 300), ctx.pick(5, 20)
    streams, tokens, rounds = ctx.pick(5, 10), ctx.pick(1_000, 2_000), ctx.pick(1, 6)
    # The upstream answers the first requests (the TTFT phase's, exactly) with short replies,
    # then every one with `tokens` chunks.
    short_count = len(APIS) * (warmup + count)
    upstream = {"tokens": tokens, "short_first": short_count}
    with Stack(ctx, "openai", upstream=upstream) as stack:
        port = stack.port("gateway")
        first = stack.run(
            "api_ttft",
            limit=300,
            port=port,
            count=count,
            warmup=warmup,
            expected=expected_text(TOKEN_TEXT, SHORT_REPLY_TOKENS),
            chunks=SHORT_REPLY_TOKENS,
        ).result
        if first["errors"]:
            raise RuntimeError(f"time to first token: replies went wrong: {first['errors']}")
        cpu, saved = _cpu_rounds(stack, streams=streams, tokens=tokens, rounds=rounds)
    ttft = {api: summary(first["ttft"][api], 1000) for api in APIS}
    # Each iteration's three replies ran back to back: the median of the differences within
    # an iteration is a check on the difference of the medians (the row's figure).
    native = first["ttft"]["native"]
    paired = {
        api: median([(a - b) * 1000 for a, b in zip(first["ttft"][api], native, strict=True)])
        for api in APIS[1:]
    }
    headers = {api: summary(first["headers"][api], 1000) for api in APIS}
    per_chunk = {
        api: {key: median([t[key] for t in trials]) for key in trials[0]}
        for api, trials in cpu.items()
    }
    ctx.raw["openai"] = {
        "ttft_ms": ttft,
        "headers_ms": headers,
        "paired_added_p50_ms": paired,
        "ttft_count": count,
        "ttft_chunks": SHORT_REPLY_TOKENS,
        "streams": streams,
        "tokens": tokens,
        "rounds": cpu,
        "medians": per_chunk,
        "saved": saved,
    }
    _rows(ctx, ttft, per_chunk, saved, streams=streams, tokens=tokens)


def _cpu_rounds(
    stack: Stack, *, streams: int, tokens: int, rounds: int
) -> tuple[dict[str, list[dict[str, float]]], dict[str, Any]]:
    """Rounds of `streams` concurrent replies of `tokens` chunks per API, in a rotating order;
    per round, each process's CPU per chunk. Then (not measured) whether every run was saved."""
    port = stack.port("gateway")
    expected = expected_text(TOKEN_TEXT, tokens)
    job = {"port": port, "expected": expected, "chunks": tokens, "timeout": 100}
    run_ids: list[str] = []
    for api in APIS:  # warm-up: the concurrent paths' first-call costs out of the way
        warm = stack.run("api_streams", limit=120, api=api, streams=2, **job).result
        run_ids += warm["run_ids"]
    per: dict[str, list[dict[str, float]]] = {api: [] for api in APIS}
    chunks = streams * tokens
    for rep in range(rounds):
        shift = rep % len(APIS)
        for api in APIS[shift:] + APIS[:shift]:
            trial = stack.run("api_streams", limit=120, api=api, streams=streams, **job)
            result = trial.result
            if result["complete"] != streams:
                raise RuntimeError(f"{api}: {streams - result['complete']} replies went wrong: "
                                   f"{result['errors']}")  # fmt: skip
            run_ids += result["run_ids"]
            per[api].append(
                {
                    "cpu_us_per_chunk": trial.cpu["gateway"] / chunks * 1e6,
                    "upstream_cpu_us_per_chunk": trial.cpu["upstream"] / chunks * 1e6,
                    "client_cpu_us_per_chunk": trial.cpu["client"] / chunks * 1e6,
                    "chunks_per_s": chunks / result["elapsed"],
                    "wall": trial.wall,
                }
            )
    saved = stack.run("api_saved", limit=120, port=port, run_ids=run_ids, expected=expected)
    return per, {**saved.result, "runs": len(run_ids)}


def _rows(
    ctx: Context,
    ttft: dict[str, dict[str, float]],
    cpu: dict[str, dict[str, float]],
    saved: dict[str, Any],
    *,
    streams: int,
    tokens: int,
) -> None:
    native_ttft, native_cpu = ttft["native"], cpu["native"]["cpu_us_per_chunk"]
    for api in APIS[1:]:
        for q in ("p50", "p99"):
            added = ttft[api][q] - native_ttft[q]
            ctx.add(
                Row(
                    SCENARIO.label,
                    f"{PATHS[api]}: added TTFT {q} (measured = {api} − native; baseline = native)",
                    "ms",
                    added,
                    f"≤ {TTFT_LIMIT_MS:g} ms" if q == "p50" else "",
                    native_ttft[q],
                    ratio(ttft[api][q], native_ttft[q]),
                    added <= TTFT_LIMIT_MS if q == "p50" else None,
                )
            )
    for api in APIS[1:]:
        measured = cpu[api]["cpu_us_per_chunk"]
        share = ratio(measured, native_cpu)
        ctx.add(
            Row(
                SCENARIO.label,
                f"{PATHS[api]}: gateway CPU per chunk, {streams} concurrent streams × "
                f"{tokens:,} chunks at 0 delay (baseline = native)",
                "µs",
                measured,
                f"≤ {CPU_LIMIT:g}× native",
                native_cpu,
                share,
                share <= CPU_LIMIT,
            )
        )
    fraction = saved["saved_equal"] / saved["runs"] if saved["runs"] else 0.0
    ctx.add(
        Row(
            SCENARIO.label,
            "long replies (all three APIs) read complete and saved equal to what the upstream sent",
            "%",
            fraction * 100,
            "100 %",
            passed=fraction == 1.0,
            note="" if fraction == 1.0 else f"statuses {saved['statuses']}",
        )
    )
