"""Beside the library: the demo corpus, the PyAV media writer it and the tests use, and the
throughput helpers of the benchmarks. Nothing in ``avray`` below this imports it."""
