#!/usr/bin/env python
"""bench/eventlog.py: the same benchmark as `aios bench eventlog` (see bench/RESULTS.md); prints JSON."""

from aios.cli.main import main

if __name__ == "__main__":
    import sys

    main(["bench", "eventlog", *sys.argv[1:]])
