"""Helpers shared by the benchmark scripts (benchmarks/) and tools/compare_methods.py: the demo model with
real batches, one step, peak step memory (``demo``), and the interleaved per-method step cost (``method_cost``)."""
