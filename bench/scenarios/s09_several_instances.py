"""Scenario 9: several instances (Redis + PostgreSQL) side by side with one embedded instance
(SQLite, no Redis)."""

from __future__ import annotations

import math
import time
from typing import Any

from bench.cluster import SCRIPT_COMMANDS, ClusterStack, GatewaySpec, command_delta, plain_url
from bench.cluster import unavailable as cluster_unavailable
from bench.harness import Context, Row, Scenario, Trial
from bench.jobs import gateway
from bench.stats import mb, ratio, summary

SCENARIO = Scenario(9, "several instances")
DELAY = 0.02  # 50 tokens/s per stream


def run(ctx: Context) -> None:
    """Instances A and B share Redis and PostgreSQL; E is embedded. Delivery
    latency of a reader on B against one on A for the same runs, Redis commands per relayed
    token, resume and cancel through B of runs A owns, many streams over A and B saved
    exactly, Redis memory per live stream; then `serve --workers 2` against `--workers 1`."""
    missing = cluster_unavailable()
    if missing:
        ctx.add(Row(SCENARIO.label, "not run", "", math.nan, note=f"skipped: {missing}"))
        return
    tokens = ctx.pick(50, 200)
    upstream = {"tokens": tokens, "delay": DELAY, "stamp": True}
    # A and B share a database; w1 (`serve`) and w2 (`serve --workers 2`) have one each and
    # stay idle until the last phase.
    gateways = {
        "embedded": GatewaySpec(),
        "a": GatewaySpec(database="shared"),
        "b": GatewaySpec(database="shared"),
        "w1": GatewaySpec(database="w1"),
        "w2": GatewaySpec(database="w2", workers=2),
    }
    found: dict[str, Any] = {"tokens": tokens}
    with ClusterStack(ctx, "several-instances", upstream=upstream, gateways=gateways) as stack:
        found["relay"] = _relay(ctx, stack, tokens)
        found["resume"] = _resume(ctx, stack)
        found["cancel"] = _cancel(ctx, stack)
        found["spread"] = _spread(ctx, stack, tokens)
        found["workers"] = _workers(ctx, stack, tokens)
    ctx.raw["several_instances"] = found


# -- delivery latency and Redis commands per token ---------------------------------------------


def _relay(ctx: Context, stack: ClusterStack, tokens: int) -> list[dict[str, Any]]:
    levels = ctx.pick([20], [10, 100])
    reps = ctx.pick(1, 2)
    out: list[dict[str, Any]] = []
    for streams in levels:
        trials: dict[str, list[Trial]] = {"cluster": [], "embedded": []}
        sent: dict[str, int] = {}
        processed = 0
        for rep in range(reps):
            for name in ("cluster", "embedded") if rep % 2 == 0 else ("embedded", "cluster"):
                owner, reader = ("a", "b") if name == "cluster" else ("embedded", "embedded")
                before, total_before = (
                    stack.redis_commands(),
                    stack.redis_stat("total_commands_processed"),
                )
                trial = stack.run(
                    "relay_across",
                    limit=120,
                    owner_port=stack.port(owner),
                    reader_port=stack.port(reader),
                    streams=streams,
                    tokens=tokens,
                    ramp=min(1.0, streams / 100),
                    timeout=90,
                )
                trials[name].append(trial)
                if name == "cluster":
                    processed += stack.redis_stat("total_commands_processed") - total_before
                    for command, calls in command_delta(before, stack.redis_commands()).items():
                        sent[command] = sent.get(command, 0) + calls
        relayed = streams * tokens * reps
        client_side = {c: n for c, n in sent.items() if c not in SCRIPT_COMMANDS}

        def joined(name: str, key: str, trials: dict[str, list[Trial]] = trials) -> list[float]:
            return [x for t in trials[name] for x in t.result[key]]

        level = {
            "streams": streams,
            "reps": reps,
            "latency_ms": {
                "owner": summary(joined("cluster", "owner"), 1000),
                "remote": summary(joined("cluster", "reader"), 1000),
                "embedded_first": summary(joined("embedded", "owner"), 1000),
                "embedded_second": summary(joined("embedded", "reader"), 1000),
            },
            "complete": {
                name: sum(t.result["complete"] for t in group) / (streams * len(group))
                for name, group in trials.items()
            },
            "errors": [
                t.result["errors"] for g in trials.values() for t in g if t.result["errors"]
            ],
            "reader_refused": {
                "first_attempt": sum(t.result["refused_first"] for t in trials["cluster"]),
                "all_attempts": sum(t.result["refused"] for t in trials["cluster"]),
            },
            "redis_commands": sent,
            "redis_client_per_token": sum(client_side.values()) / relayed,
            "redis_server_per_token": processed / relayed,
            "relayed_tokens": relayed,
        }
        out.append(level)
        _relay_rows(ctx, level, is_last=streams == levels[-1])
    return out


def _relay_rows(ctx: Context, level: dict[str, Any], *, is_last: bool) -> None:
    n = level["streams"]
    lat = level["latency_ms"]
    for q in ("p50", "p99"):
        remote, owner = lat["remote"][q], lat["owner"][q]
        target = "≤ 5 ms" if q == "p99" else "—"
        ctx.add(
            Row(
                SCENARIO.label,
                f"{n} paced streams on A: delivery latency {q}, reader on B − reader on A "
                f"(baseline = reader on A)",
                "ms",
                remote - owner,
                target,
                owner,
                ratio(remote, owner),
                remote - owner <= 5 if q == "p99" else None,
            )
        )
        ctx.add(
            Row(
                SCENARIO.label,
                f"{n} paced streams: delivery latency {q}, reader on the owner A "
                f"(baseline = 2nd reader on the embedded instance)",
                "ms",
                owner,
                "—",
                lat["embedded_second"][q],
                ratio(owner, lat["embedded_second"][q]),
            )
        )
    both = min(level["complete"].values())
    ctx.add(
        Row(
            SCENARIO.label,
            f"{n} paced streams: readers (A and B; embedded) that got every event",
            "%",
            level["complete"]["cluster"] * 100,
            "100 %",
            level["complete"]["embedded"] * 100,
            None,
            both == 1.0,
        )
    )
    refused = level["reader_refused"]
    ctx.add(
        Row(
            SCENARIO.label,
            f"{n} paced streams: reader on B connected right after A's response headers, "
            "answered 503 (retried every 10 ms)",
            "%",
            refused["first_attempt"] / (n * level["reps"]) * 100,
            note=f"{refused['all_attempts']} 503 answers in all",
        )
    )
    if not is_last:
        return
    commands = level["redis_commands"]

    def mix(script: bool) -> str:
        chosen = [(c, k) for c, k in commands.items() if (c in SCRIPT_COMMANDS) == script]
        return ", ".join(f"{c} {k}" for c, k in sorted(chosen, key=lambda x: -x[1])[:6])

    ctx.add(
        Row(
            SCENARIO.label,
            f"{n} streams × 50 tokens/s, readers on A and B: Redis commands per relayed token "
            "sent by the gateways (INFO commandstats, script-internal commands left out)",
            "commands",
            level["redis_client_per_token"],
            "≤ 0.2",
            None,
            None,
            level["redis_client_per_token"] <= 0.2,
            f"{level['relayed_tokens']} tokens; {mix(script=False)}",
        )
    )
    ctx.add(
        Row(
            SCENARIO.label,
            f"{n} streams × 50 tokens/s: Redis commands per relayed token, server side "
            "(total_commands_processed, counts each command inside a script)",
            "commands",
            level["redis_server_per_token"],
            note=f"inside scripts: {mix(script=True)}",
        )
    )


# -- resume and cancel through another instance -----------------------------------------------


def _resume(ctx: Context, stack: ClusterStack) -> dict[str, Any]:
    samples = ctx.pick(10, 60)
    common: dict[str, Any] = {"runs": 4, "samples": samples, "timeout": 60}
    cluster = stack.run(
        "resume_across",
        limit=120,
        owner_port=stack.port("a"),
        readers={"b": stack.port("b"), "a": stack.port("a")},
        **common,
    ).result
    embedded = stack.run(
        "resume_across",
        limit=120,
        owner_port=stack.port("embedded"),
        readers={"embedded": stack.port("embedded")},
        **common,
    ).result
    found: dict[str, Any] = {}
    for phase, label in (("live", "mid-run"), ("ended", "after the end")):
        times = {**cluster[phase]["times"], **embedded[phase]["times"]}
        figures = {name: summary(values, 1000) for name, values in times.items()}
        wrong = cluster[phase]["wrong"] + embedded[phase]["wrong"]
        found[phase] = {"ms": figures, "wrong": wrong}
        for q in ("p50", "p99"):
            b, a, e = figures["b"][q], figures["a"][q], figures["embedded"][q]
            target = "≤ 5 ms" if q == "p50" else "—"
            ctx.add(
                Row(
                    SCENARIO.label,
                    f"resume on B of a run owned by A, {label}: time to first replayed event "
                    f"{q} (baseline = resume on A)",
                    "ms",
                    b,
                    target,
                    a,
                    ratio(b, a),
                    (b <= 5 and wrong == 0) if q == "p50" else None,
                    f"{wrong} resumes started at the wrong event" if wrong else "",
                )
            )
            ctx.add(
                Row(
                    SCENARIO.label,
                    f"resume on the owner A, {label}: time to first replayed event {q} "
                    "(baseline = embedded instance)",
                    "ms",
                    a,
                    "—",
                    e,
                    ratio(a, e),
                )
            )
    return found


def _cancel(ctx: Context, stack: ClusterStack) -> dict[str, Any]:
    common: dict[str, Any] = {
        "upstream_port": stack.port("upstream"),
        "rounds": ctx.pick(2, 15),
        "after_events": 5,
        "timeout": 60,
    }
    cluster = stack.run(
        "cancel_across",
        limit=180,
        owner_port=stack.port("a"),
        cancellers={"b": stack.port("b"), "a": stack.port("a")},
        **common,
    ).result
    embedded = stack.run(
        "cancel_across",
        limit=120,
        owner_port=stack.port("embedded"),
        cancellers={"embedded": stack.port("embedded")},
        **common,
    ).result
    times = {**cluster["times"], **embedded["times"]}
    figures = {name: summary(values, 1000) for name, values in times.items()}
    failures = {**cluster["failures"], **embedded["failures"]}
    for q in ("p50", "p99"):
        b, a, e = figures["b"][q], figures["a"][q], figures["embedded"][q]
        note = f"failures: {failures}" if failures else ""
        ctx.add(
            Row(
                SCENARIO.label,
                f"cancel sent to B of a run owned by A until the upstream connection closes "
                f"{q} (baseline = cancel sent to A)",
                "ms",
                b,
                "≤ 100 ms" if q == "p99" else "—",
                a,
                ratio(b, a),
                (b <= 100 and not failures) if q == "p99" else None,
                note,
            )
        )
        ctx.add(
            Row(
                SCENARIO.label,
                f"cancel sent to the owner A until the upstream connection closes {q} "
                "(baseline = embedded instance)",
                "ms",
                a,
                "—",
                e,
                ratio(a, e),
            )
        )
    return {"ms": figures, "failures": failures, "n": {k: len(v) for k, v in times.items()}}


# -- many streams over two instances, Redis memory ---------------------------------------------


def _spread(ctx: Context, stack: ClusterStack, tokens: int) -> dict[str, Any]:
    streams = ctx.pick(100, 1000)
    with stack.redis_memory() as memory:
        trial = stack.run(
            "spread",
            limit=300,
            ports=[stack.port("a"), stack.port("b")],
            streams=streams,
            tokens=tokens,
            ramp=min(1.0, streams / 1000),
            database_url=plain_url(stack.database_url("shared")),
            timeout=240,
        )
    result = trial.result
    # Half-way through the job every stream is live (started, not ended), its reply partly in
    # Redis; at the end every reply is whole there, until the retention expires.
    before, live, after = memory.first, memory.at(trial.wall / 2), memory.last
    per_1000 = 1000 / streams
    found = {
        "streams": streams,
        "complete": result["complete"],
        "saved_equal": result["saved_equal"],
        "statuses": result["statuses"],
        "errors": result["errors"],
        "ttft_ms": summary(result["ttfts"], 1000),
        "latency_ms": summary(result["latencies"], 1000),
        "gap_ms": summary(result["gaps"], 1000),
        "elapsed": result["elapsed"],
        "redis_used_memory": {"before": before, "halfway": live, "after": after},
        "redis_used_memory_timeline": memory.samples,
        "redis_mb_per_1000_live": mb(live - before) * per_1000,
        "redis_mb_per_1000_ended": mb(after - before) * per_1000,
    }
    exact = result["saved_equal"] / streams
    ctx.add(
        Row(
            SCENARIO.label,
            f"{streams} concurrent streams, half started on A and half on B: read complete and "
            "saved exactly (PostgreSQL = what the upstream sent)",
            "%",
            exact * 100,
            "100 %",
            None,
            None,
            exact == 1.0,
            f"read complete {result['complete']}, saved {result['statuses']}; errors "
            f"{result['errors']}"
            if exact < 1
            else "",
        )
    )
    for q in ("p50", "p99"):
        ctx.add(
            Row(
                SCENARIO.label,
                f"{streams} streams over A and B: token delivery latency {q}",
                "ms",
                found["latency_ms"][q],
            )
        )
    chars = sum(len(f"{i}@{time.monotonic_ns()} ") for i in range(tokens))
    note = f"{tokens} stamped tokens per reply, {chars / 1000:.1f} KB of text"
    ctx.add(
        Row(
            SCENARIO.label,
            "Redis memory per 1,000 live streams, half-way through the job "
            "(used_memory − before, scaled)",
            "MB",
            found["redis_mb_per_1000_live"],
            note=note,
        )
    )
    ctx.add(
        Row(
            SCENARIO.label,
            "Redis memory per 1,000 streams after they ended, before expiry",
            "MB",
            found["redis_mb_per_1000_ended"],
            note=note,
        )
    )
    return found


# -- serve --workers 2 against --workers 1 ----------------------------------------------------


def _workers(ctx: Context, stack: ClusterStack, tokens: int) -> dict[str, Any]:
    streams = ctx.pick(50, 500)
    reps = ctx.pick(1, 2)
    trials: dict[str, list[Trial]] = {"w1": [], "w2": [], "embedded": []}
    order = ["w1", "w2", "embedded"]
    for rep in range(reps):
        for name in order if rep % 2 == 0 else order[::-1]:
            trials[name].append(
                stack.run(
                    "concurrent",
                    limit=240,
                    target=gateway(stack.port(name)),
                    streams=streams,
                    tokens=tokens,
                    ramp=0.0,
                    timeout=200,
                )
            )
    ttft = {
        name: summary([x for t in group for x in t.result["ttfts"]], 1000)
        for name, group in trials.items()
    }
    saved = {
        name: sum(t.result["saved_equal"] or 0 for t in group) / (streams * len(group))
        for name, group in trials.items()
    }
    for q in ("p50", "p99"):
        w2, w1, e = ttft["w2"][q], ttft["w1"][q], ttft["embedded"][q]
        ctx.add(
            Row(
                SCENARIO.label,
                f"{streams} concurrent new chats: time to first token {q}, serve --workers 2 "
                "(baseline = --workers 1; both on Redis + PostgreSQL)",
                "ms",
                w2,
                "≤ 50 % of 1 worker's" if q == "p50" else "—",
                w1,
                ratio(w2, w1),
                ratio(w2, w1) <= 0.5 if q == "p50" else None,
            )
        )
        ctx.add(
            Row(
                SCENARIO.label,
                f"{streams} concurrent new chats: time to first token {q}, --workers 1 on "
                "Redis + PostgreSQL (baseline = embedded instance)",
                "ms",
                w1,
                "—",
                e,
                ratio(w1, e),
            )
        )
    ctx.add(
        Row(
            SCENARIO.label,
            f"{streams} concurrent new chats: complete and saved, --workers 2 "
            "(baseline = --workers 1)",
            "%",
            saved["w2"] * 100,
            "100 %",
            saved["w1"] * 100,
            None,
            min(saved.values()) == 1.0,
            f"embedded {saved['embedded'] * 100:.0f} %",
        )
    )
    return {"streams": streams, "ttft_ms": ttft, "saved": saved}
