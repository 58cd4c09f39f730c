"""Conch's benchmark suite: ``python -m benchmarks`` (or ``./dev bench``); see benchmarks/README.md."""
