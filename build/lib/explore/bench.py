"""Deprecated: `python -m explore.bench` is now `python -m bench` (same arguments and output).

Kept as an alias for one release; it prints a note to stderr and runs `bench.run.main`.
"""

import sys

if __name__ == "__main__":
    from bench.run import main

    print("note: `python -m explore.bench` is deprecated, use `python -m bench` (same arguments)",
          file=sys.stderr, flush=True)
    sys.exit(main())
