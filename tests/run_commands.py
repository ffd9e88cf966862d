"""Run `python -m <module> <args>` command lines one after another in this one process, each as
`python -m` runs it (runpy, as __main__, with its own sys.argv): a block of documented commands
is checked as written for one interpreter start instead of one per command (~5 CPU-s each:
torch and its CUDA libraries, torch._dynamo, Hydra). Stops at the first that fails, with its
status. Each command line's time goes to stdout.

    python tests/run_commands.py "python -m explore.train ..." "python -m explore.evaluate ..."
"""

from __future__ import annotations

import runpy
import shlex
import sys
import time


def run(line: str) -> int:
    python, flag, module, *args = shlex.split(line)
    if (python, flag) != ("python", "-m"):
        raise SystemExit(f"not a `python -m` command line: {line}")
    sys.argv = [module, *args]  # runpy sets argv[0] to the module's file, as python -m does
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    for line in sys.argv[1:]:
        start = time.perf_counter()
        status = run(line)
        print(f"{time.perf_counter() - start:6.1f} s  {line}", flush=True)
        if status:
            print(f"exit status {status}: {line}", file=sys.stderr)
            sys.exit(status)
