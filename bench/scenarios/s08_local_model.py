"""Scenario 8: the local model (llama.cpp serving the packaged SmolLM2-135M) called directly
and through the gateway, interleaved, against the same model-server process.

Every request carries a distinct short prompt (so the model's prompt cache treats both paths
alike) and is capped at `MAX_TOKENS` (the gateway's `MARTLET_MAX_TOKENS`, `max_tokens` on
direct requests); the gateway path cannot set temperature or seed, so neither path does.
Both are read by the same small httpx reader on a fresh connection; the completion-token count
comes from the usage the server reports (the gateway's json `done` event, the direct stream's
`include_usage` chunk).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import httpx

from bench.harness import Context, Row, Scenario
from bench.procs import Monitor, Service, start_gateway, start_local_model, wait_gateway
from bench.stats import median, ratio, summary

MAX_TOKENS = 64
PROMPT = "Request {n}: write a few sentences about the sea."
SCENARIO = Scenario(8, "local model")
# One CPU left for the gateway and the reader: with every CPU, llama.cpp's threads (which spin
# between tokens) compete with the gateway process, and a stalled thread stalls the whole
# token, so a 2-CPU machine would measure contention rather than the gateway.
THREADS = max(1, (os.cpu_count() or 1) - 1)


def _read(path: str, port: int, body: dict[str, Any]) -> dict[str, Any]:
    """Send one streamed request and time it: TTFT (request → first non-empty text), the last
    text, the end, and the usage the stream reported."""
    gateway = path.startswith("/chat")
    t_sent = time.monotonic()
    first = last = math.nan
    usage: dict[str, Any] | None = None
    event = ""
    url = f"http://127.0.0.1:{port}{path}"
    headers = {"Connection": "close", "Accept": "text/event-stream"}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
                continue
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            data = json.loads(payload)
            text = ""
            if gateway:
                if event == "delta":
                    text = data.get("text") or ""
                elif event == "done":
                    if data.get("status") != "completed":
                        raise RuntimeError(f"gateway run ended {data}")
                    usage = data.get("usage")
                    break
            else:
                choices = data.get("choices") or ()
                text = (choices[0].get("delta") or {}).get("content") or "" if choices else ""
                usage = data.get("usage") or usage
            if text:
                now = time.monotonic()
                first = now if math.isnan(first) else first
                last = now
    t_end = time.monotonic()
    if usage is None or math.isnan(first):
        raise RuntimeError(f"{url}: no text or no usage in the stream")
    tokens = int(usage["completion_tokens"])
    return {
        "ttft": first - t_sent,
        "total": t_end - t_sent,
        "completion_tokens": tokens,
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        # Decode rate seen by the reader: tokens after the first over first → last text.
        "tokens_per_s": (tokens - 1) / (last - first) if last > first else math.nan,
        "e2e_tokens_per_s": tokens / (t_end - t_sent),
    }


def run(ctx: Context) -> None:
    """TTFT and tokens/s of the local model, direct vs through the gateway."""
    reps = ctx.pick(3, 8)
    logdir = ctx.workdir / f"local-{time.monotonic_ns()}"
    logdir.mkdir(parents=True)
    services: list[Service] = []
    per: dict[str, list[dict[str, Any]]] = {"gateway": [], "direct": []}
    try:
        model, base_url, model_name = start_local_model(logdir, parallel=1, threads=THREADS)
        services.append(model)
        settings = {
            "MARTLET_PROVIDER": "openai",
            "OPENAI_BASE_URL": base_url,
            "MARTLET_MODEL": model_name,
            "MARTLET_MAX_TOKENS": str(MAX_TOKENS),
            **ctx.gateway_env,
        }
        gw = start_gateway(logdir, model, settings, wait=False)
        services.append(gw)
        wait_gateway(gw)
        count = 0

        def one(name: str) -> dict[str, Any]:
            nonlocal count
            count += 1
            prompt = PROMPT.format(n=count)
            if name == "gateway":
                path, port = "/chat/stream?format=json", gw.port
                body: dict[str, Any] = {"message": prompt}
            else:
                path, port = "/v1/chat/completions", model.port
                body = {
                    "model": model_name,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": MAX_TOKENS,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
            with Monitor({"gateway": gw, "model": model}) as monitor:
                result = _read(path, port, body)
            ctx.note_trial("local", name, monitor)
            result["gateway_cpu"] = monitor.cpu["gateway"]
            result["model_cpu"] = monitor.cpu["model"]
            for service in services:
                if not service.alive():
                    raise RuntimeError(f"{service.name} died:\n{service.log_tail()}")
            return result

        one("gateway")  # warm-up: first chat (database, SDK client, connection to the model)
        one("direct")
        for rep in range(reps):
            for name in ("gateway", "direct") if rep % 2 == 0 else ("direct", "gateway"):
                per[name].append(one(name))
    except BaseException:
        for service in services:
            print(f"--- {service.name} log tail ---\n{service.log_tail()}")
        raise
    finally:
        for service in reversed(services):
            service.stop()
    _rows(ctx, per, model_name)


def _rows(ctx: Context, per: dict[str, list[dict[str, Any]]], model_name: str) -> None:
    ttft = {name: summary([t["ttft"] for t in trials], 1000) for name, trials in per.items()}
    med = {
        name: {key: median([float(t[key]) for t in trials]) for key in trials[0]}
        for name, trials in per.items()
    }
    ctx.raw["local_model"] = {
        "model": model_name,
        "max_tokens": MAX_TOKENS,
        "threads": THREADS,
        "trials": per,
        "medians": med,
        "ttft_ms": ttft,
    }
    gw, up = med["gateway"], med["direct"]
    n = len(per["gateway"])
    rows = [
        ("TTFT p50 (request → first text)", "ms", ttft["gateway"]["p50"], ttft["direct"]["p50"]),
        (f"TTFT max of {n} (too few trials for a p99)", "ms", ttft["gateway"]["max"],
         ttft["direct"]["max"]),
        ("generation tokens/s p50 (first → last text)", "tokens/s", gw["tokens_per_s"],
         up["tokens_per_s"]),
        ("end-to-end tokens/s p50 (request → end)", "tokens/s", gw["e2e_tokens_per_s"],
         up["e2e_tokens_per_s"]),
        ("completion tokens per reply p50 (usage)", "tokens", gw["completion_tokens"],
         up["completion_tokens"]),
        ("prompt tokens per request p50 (usage)", "tokens", gw["prompt_tokens"],
         up["prompt_tokens"]),
    ]  # fmt: skip
    for metric, unit, measured, baseline in rows:
        share = ratio(measured, baseline)
        ctx.add(Row(SCENARIO.label, metric, unit, measured, "—", baseline, share))
    per_token = median([t["gateway_cpu"] / t["completion_tokens"] * 1e6 for t in per["gateway"]])
    model_per_token = median(
        [t["model_cpu"] / t["completion_tokens"] * 1e6 for t in per["gateway"]]
    )
    ctx.add(
        Row(
            SCENARIO.label,
            "gateway CPU per token, gateway trials (baseline = model server CPU per token)",
            "µs",
            per_token,
            "—",
            model_per_token,
            ratio(per_token, model_per_token),
            note=f"{model_name}, {THREADS} thread(s), max_tokens {MAX_TOKENS}, "
            f"{n} trials per path, interleaved",
        )
    )
