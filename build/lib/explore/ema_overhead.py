"""Deprecated: `python -m explore.ema_overhead` is now `python -m bench.ema_overhead`.

Kept as an alias for one release; it prints a note to stderr and runs `bench.ema_overhead.main`.
"""

import sys

if __name__ == "__main__":
    from bench.ema_overhead import main

    print("note: `python -m explore.ema_overhead` is deprecated, use `python -m "
          "bench.ema_overhead` (same arguments)", file=sys.stderr, flush=True)
    main()
