"""Benchmarks: side-by-side serving (``python -m bench.serve_ab``) and kernel timings; results in RESULTS.md."""
