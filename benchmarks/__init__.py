"""Reproducible benchmarks: ``python -m benchmarks --help``."""
