"""The benchmark scenarios, one module each: `sNN_<what>.py` is scenario NN, the number the
results table, `--only` and docs/BENCHMARKS.md use. Each module has `SCENARIO` (its number
and title) and `run(ctx)`."""

from __future__ import annotations

from collections.abc import Callable

from bench.harness import Context, Scenario
from bench.scenarios import (
    s01_ttft,
    s02_relay,
    s03_concurrency,
    s04_storm,
    s05_fanout,
    s06_resume,
    s07_long_replies,
    s08_local_model,
    s09_several_instances,
    s10_openai_front_door,
)

SCENARIOS: dict[str, tuple[Scenario, Callable[[Context], None]]] = {
    str(module.SCENARIO.number): (module.SCENARIO, module.run)
    for module in (
        s01_ttft,
        s02_relay,
        s03_concurrency,
        s04_storm,
        s05_fanout,
        s06_resume,
        s07_long_replies,
        s08_local_model,
        s09_several_instances,
        s10_openai_front_door,
    )
}
"""Every scenario by its number (as `--only` spells it), in the order the suite runs them."""
