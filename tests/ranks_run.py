"""One rank of a data-parallel training for the tests, started by torchrun:

    python -m torch.distributed.run --nproc_per_node=2 tests/ranks_run.py RUN_DIR [--die-at N]
        [--raise-at N] [--rank R] -- <explore.train overrides>

It trains as `python -m explore.train` does (explore.train.train), with what the tests need to
see done to one rank: `--die-at N` kills rank R with SIGKILL as its optimizer step N begins (a
lost machine); `--raise-at N` makes rank R raise there (a bug on one rank). Every rank but 0
also records each file it opens for writing, creates or renames inside RUN_DIR, and fails at the
end when there is one: only rank 0 writes the run folder.
"""

from __future__ import annotations

import argparse
import builtins
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--die-at", type=int)
    p.add_argument("--raise-at", type=int)
    p.add_argument("--rank", type=int, default=0)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    args.overrides = argv[cut + 1:]
    rank = int(os.environ.get("RANK", "0"))
    run = Path(args.run_dir).resolve()

    import torch

    from explore.core.config import compose
    from explore.train import train
    from explore.training import loop

    torch.set_num_threads(1)
    real_step, calls = loop.train_step, {"n": 0}

    def step(*a, **kw):
        calls["n"] += 1
        if rank == args.rank and calls["n"] == args.die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if rank == args.rank and calls["n"] == args.raise_at:
            raise RuntimeError(f"rank {rank} fails on purpose at step {calls['n']}")
        return real_step(*a, **kw)

    loop.train_step = step
    written: list[str] = []
    if rank != 0:
        def inside(path) -> bool:
            try:
                return Path(os.fsdecode(path)).resolve().is_relative_to(run)
            except (TypeError, ValueError):
                return False

        real_open, real_os_open, real_replace = builtins.open, os.open, os.replace

        def open_(file, mode="r", *a, **kw):
            if any(c in mode for c in "wax+") and inside(file):
                written.append(f"open {file}")
            return real_open(file, mode, *a, **kw)

        def os_open(path, flags, *a, **kw):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
                written.append(f"os.open {path}")
            return real_os_open(path, flags, *a, **kw)

        def replace(src, dst, *a, **kw):
            if inside(dst):
                written.append(f"replace {dst}")
            return real_replace(src, dst, *a, **kw)

        builtins.open, os.open, os.replace = open_, os_open, replace
    train(compose("train", args.overrides), run, command=args.overrides)
    if written:
        print(f"rank {rank} wrote into the run folder: {written[:5]}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
