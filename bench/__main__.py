"""`python -m bench [--quick] [--only 1,3] [--profile]`: run the benchmark suite.

Every scenario (`bench/scenarios/`, one module each) starts its own processes on 127.0.0.1
(fake upstream, gateway, load client; the pass-through proxy for scenario 2; the local model
server for scenario 8; a Redis server and PostgreSQL databases for scenario 9), bounds every
loop in count and time, and stops everything when it ends. Results:
`bench/results/<timestamp>.json` and `.md`; plots: PNG files in `docs/bench/` after a complete
full run, else next to the results (so smoke, partial and profiled runs never overwrite the
committed plots).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

from bench import plots, report
from bench.harness import Context
from bench.procs import ROOT
from bench.scenarios import SCENARIOS

NUMBERS = f"{min(SCENARIOS, key=int)}-{max(SCENARIOS, key=int)}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run the benchmark suite.")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under 2 minutes")
    parser.add_argument(
        "--only", default="", help=f"comma-separated scenario numbers ({NUMBERS}), default all"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="attach py-spy to the gateway and report hot spots (skews the timings)",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the gateway process (repeatable), for experiments",
    )
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--plots-dir", type=Path, default=None)
    return parser.parse_args(argv)


def selected(only: str) -> list[str]:
    """The scenario keys to run, in order."""
    if not only.strip():
        return list(SCENARIOS)
    keys = [k.strip() for k in only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}; choose from {NUMBERS}")
    return [k for k in SCENARIOS if k in keys]


def main(argv: list[str] | None = None) -> int:
    """Run the suite; 0 if every scenario ran (missed targets are results, not failures)."""
    args = parse_args(argv)
    keys = selected(args.only)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    mode = "quick" if args.quick else "full"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    # Only a complete, unprofiled full run replaces the committed plots in docs/bench.
    partial = args.quick or args.profile or bool(args.only.strip()) or bool(args.gateway_env)
    plots_dir = args.plots_dir or (
        args.results_dir / f"{stamp}-plots" if partial else ROOT / "docs" / "bench"
    )
    ctx = Context.create(quick=args.quick, profile=args.profile)
    ctx.gateway_env = dict(item.split("=", 1) for item in args.gateway_env)
    if args.profile:
        ctx.keep_dir = args.results_dir / f"{stamp}-profiles"
    failures: dict[str, str] = {}
    source = report.source_state()
    started = time.monotonic()
    try:
        for key in keys:
            scenario, run = SCENARIOS[key]
            since = time.monotonic() - started
            print(f"[{since:6.1f}s] scenario {key}: {scenario.title} ...", flush=True)
            begin = time.monotonic()
            try:
                run(ctx)
            except Exception as exc:
                failures[key] = f"{type(exc).__name__}: {str(exc)[:500]}"
                traceback.print_exc()
            ctx.timings[key] = time.monotonic() - begin
            print(f"         done in {ctx.timings[key]:.1f}s", flush=True)
    finally:
        ctx.cleanup()
    elapsed = time.monotonic() - started
    info = {
        "mode": mode,
        "started": stamp,
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "elapsed_s": elapsed,
        "machine": report.machine(),
        "failures": failures,
        "gateway_env": ctx.gateway_env,
        "source": source,
        "source_at_end": report.source_state(),
    }
    written = plots.draw_all(ctx.plots, plots_dir)
    json_path = args.results_dir / f"{stamp}.json"
    md_path = args.results_dir / f"{stamp}.md"
    report.write_json(ctx, json_path, info)
    report.write_markdown(ctx, md_path, info, written)
    print(report.table(ctx.rows))
    print(f"\n{mode} run took {elapsed:.0f}s; results: {json_path} and {md_path}")
    print(f"plots: {plots_dir}")
    for key, error in failures.items():
        print(f"scenario {key} FAILED: {error}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
