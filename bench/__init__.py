"""Benchmarks of the eventbus SDK and runtime against raw aiokafka and FastStream, side by side.

Run from the repository root: ``python -m bench.all`` (or ``python -m bench.publish --events 10000``).
See ``bench/README.md``.
"""
