"""Benchmarks (not timed tests): `python -m bench` writes bench/results.md and results.json."""
