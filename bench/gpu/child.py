"""The training process of the GPU check's resume step: `explore.train.train(cfg, run_dir)` (what
`python -m explore.train` calls) with deterministic algorithms on, and optionally a real SIGKILL
of itself right after a given optimizer step.

    python -m bench.gpu.child RUN_DIR [--die-after-step N] [--warnings FILE] -- OVERRIDES...

torch.use_deterministic_algorithms(True, warn_only=True): an operation without a deterministic
CUDA kernel (e.g. the backward of bilinear interpolation, which LIFT uses) warns instead of
stopping the run; each distinct warning is appended to FILE, so the check can say which
operations may make two CUDA runs differ. CUBLAS_WORKSPACE_CONFIG must be set by the parent
(before CUDA starts): bench.gpu.resume does.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import warnings
from pathlib import Path


def _record_warnings(path: Path | None) -> None:
    seen: set[str] = set()
    show = warnings.showwarning

    def hook(message, category, filename, lineno, file=None, line=None):
        text = f"{category.__name__}: {message}".strip()
        if text not in seen:
            seen.add(text)
            if path is not None:
                with open(path, "a") as f:
                    f.write(text.replace("\n", " ") + "\n")
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = hook
    warnings.simplefilter("always")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.child")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--die-after-step", type=int, default=None)
    p.add_argument("--warnings", type=Path, default=None)
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    args.overrides = argv[cut + 1:]
    _record_warnings(args.warnings)
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    from explore.core.config import compose
    from explore.train import train
    from explore.training import loop

    if args.die_after_step is not None:
        real, calls = loop.train_step, {"n": 0}

        def step_then_die(*a, **kw):
            out = real(*a, **kw)
            calls["n"] += 1
            if calls["n"] == args.die_after_step + 1:
                # the step before this one has been saved in last.pt (resume_every_min=0);
                # die now, without any clean-up, as a killed job does
                print(f"bench.gpu.child: SIGKILL after optimizer step {args.die_after_step}",
                      flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        loop.train_step = step_then_die
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    cfg = compose("train", list(args.overrides))
    train(cfg, args.run_dir, command=list(args.overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
