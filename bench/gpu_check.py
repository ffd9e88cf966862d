"""`python -m bench.gpu_check` (what `./scripts/gpu-check` runs): the GPU check, bench.gpu."""

import os
import sys

from .gpu.cli import main, parse_args

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
