"""`python -m bench`: the hot-path benchmarks (bench.hotpath; see `python -m bench --help`)."""

import sys

from .hotpath.run import main

sys.exit(main())
