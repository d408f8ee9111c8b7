"""martlet_molt's benchmark suite: `python -m bench` (see docs/BENCHMARKS.md)."""
