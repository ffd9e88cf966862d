"""One prepared command for a GPU slot: what only a GPU can show, within a time budget.

    ./scripts/gpu-check                                  # cuda:0, outputs/gpu-check, 480 s
    ./scripts/gpu-check --device cuda:0 --out DIR --budget-s 480
    ./scripts/gpu-check --device cpu --out DIR           # the same steps scaled down (CI)

Five steps, each with a slice of the budget (unused time passes on to the next), each printing
one verdict line; `DIR/gpu-check.json` and `DIR/gpu-check.md` are rewritten (atomically) after
every step and every measurement inside one, so whatever stops the command (the budget, SIGTERM,
a lost machine) leaves what was measured:

1. correctness (bench.gpu.correctness): Baseline and LIFT forward, CPU vs the device (fp32);
   one DDIM sample of 4 images from the same noise on both (uint8 levels); the EMA update;
2. resume (bench.gpu.resume): a 2-epoch smoke training of LIFT on the device, killed once
   mid-epoch (SIGKILL) and resumed, against an uninterrupted run, bit for bit (deterministic
   algorithms on); then `python -m explore.evaluate` of it on the device;
3. throughput (bench.gpu.throughput): training images/s at the reference size and batch 64 for
   fp32, bf16, bf16 + channels_last and + torch.compile (compile time apart), the EMA update's
   share of a step, DDIM sampling images/s at the evaluation batch, peak GPU memory of each,
   and the evaluation's other costs (feature extraction, heatmap cell, bootstrap replicate);
4. projection (bench.gpu.projection): the default study's cost from those rates, per model and
   in all, in GPU-hours and wall hours on N GPUs, against the goal of <= 12 GPU-hours;
5. pool (bench.gpu.pool): the study's device pool running two tiny jobs on two GPUs (with fewer
   GPUs: skipped, said so; on the CPU it runs them on two CPU slots instead).

A step that runs out of its slice is marked "cut off" with what it had measured. Exit status: 0
when no step failed (ok, warn, cut off and skipped all count as not failed), 1 when one failed,
2 for a bad argument, 143 after SIGTERM (files written first).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .context import Terminated

PROG = "./scripts/gpu-check"


def _terminate(signum, frame):
    raise Terminated(signal.Signals(signum).name)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        epilog="Writes DIR/gpu-check.json and DIR/gpu-check.md after every step. Exit status 0 "
               "unless a step failed (1); 143 after SIGTERM.")
    p.add_argument("--device", default="cuda:0",
                   help="cuda:N (default cuda:0) | cpu: the same steps scaled down (<= 6 min)")
    p.add_argument("--out", type=Path, default=Path("outputs/gpu-check"),
                   help="folder of gpu-check.json, gpu-check.md and the step's runs "
                        "(default outputs/gpu-check)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds for all steps together (default 480 on a GPU, 330 on the CPU)")
    p.add_argument("--gpus", default="1,2,4,8",
                   help="GPU counts for the projection's wall hours (default 1,2,4,8)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's, i.e. OMP_NUM_THREADS or all cores)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # imported here: `--help` answers without loading torch
    import torch

    from explore.core.devices import resolve_device
    from explore.core.errors import UserError

    from .check import Check
    from .plan import make_plan

    try:
        device = resolve_device(args.device)
        args.gpu_counts = sorted({int(x) for x in str(args.gpus).split(",") if x.strip()})
        if not args.gpu_counts or min(args.gpu_counts) < 1:
            raise ValueError
    except UserError as e:
        print(f"error: {e} (here: --device cpu runs the check scaled down on the CPU)",
              file=sys.stderr)
        return 2
    except ValueError:
        print(f"error: --gpus {args.gpus!r}: a comma-separated list of GPU counts >= 1",
              file=sys.stderr)
        return 2
    if args.budget_s is None:
        args.budget_s = 480.0 if device.type == "cuda" else 330.0
    if args.budget_s <= 0:
        print(f"error: --budget-s must be > 0, got {args.budget_s}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    plan = make_plan(device, Check.gpus_visible())
    args.out = args.out.resolve()  # the training and pool processes run in the repository
    args.out.mkdir(parents=True, exist_ok=True)
    repo = str(Path(__file__).resolve().parents[2])  # submitit's jobs import bench from it
    os.environ["PYTHONPATH"] = os.pathsep.join([repo, *filter(None, [os.environ.get(
        "PYTHONPATH")])])
    command = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])
    check = Check(args, plan, args.out, command)
    previous = {s: signal.signal(s, _terminate) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(f"gpu-check on {device} ({check.report['machine'].get('gpu') or 'CPU'}), budget "
              f"{args.budget_s:.0f} s, results in {args.out}", flush=True)
        return check.run()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
