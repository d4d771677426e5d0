"""Benchmarks run on a GPU machine (not part of the test suite); see each module's docstring."""
