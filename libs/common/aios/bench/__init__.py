"""Benchmarks run by ``aios bench <name>`` and the scripts under bench/; each prints one JSON object."""
