"""One prepared command for a GPU slot: what only a GPU can show, within a time budget.

    ./scripts/gpu-check                                  # cuda:0, outputs/gpu-check, 480 s
    ./scripts/gpu-check --device cuda:0 --out DIR --budget-s 480
    ./scripts/gpu-check --device cpu --out DIR           # the same steps scaled down (CI)

Five steps, each with a slice of the budget (unused time passes on to the next), each printing
one verdict line; `DIR/gpu-check.json` and `DIR/gpu-check.md` are rewritten (atomically) after
every step and every measurement inside one, so whatever stops the command (the budget, SIGTERM,
a lost machine) leaves what was measured:

1. correctness (bench.gpu_correctness): Baseline and LIFT forward, CPU vs the device (fp32);
   one DDIM sample of 4 images from the same noise on both (uint8 levels); the EMA update;
2. resume (bench.gpu_resume): a 2-epoch smoke training of LIFT on the device, killed once
   mid-epoch (SIGKILL) and resumed, against an uninterrupted run, bit for bit (deterministic
   algorithms on); then `python -m explore.evaluate` of it on the device;
3. throughput (bench.gpu_throughput): training images/s at the reference size and batch 64 for
   fp32, bf16, bf16 + channels_last and + torch.compile (compile time apart), the EMA update's
   share of a step, DDIM sampling images/s at the evaluation batch, peak GPU memory of each,
   and the evaluation's other costs (feature extraction, heatmap cell, bootstrap replicate);
4. projection (bench.gpu_projection): the default study's cost from those rates, per model and
   in all, in GPU-hours and wall hours on N GPUs, against the goal of <= 12 GPU-hours;
5. pool (bench.gpu_pool): the study's device pool running two tiny jobs on two GPUs (with fewer
   GPUs: skipped, said so; on the CPU it runs them on two CPU slots instead).

A step that runs out of its slice is marked "cut off" with what it had measured. Exit status: 0
when no step failed (ok, warn, cut off and skipped all count as not failed), 1 when one failed,
2 for a bad argument, 143 after SIGTERM (files written first).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

PROG = "./scripts/gpu-check"
SCHEMA = "gpu-check-v1"
STEP_NAMES = {1: "correctness", 2: "resume", 3: "throughput", 4: "projection", 5: "pool"}
GOAL_GPU_HOURS = 12.0
FINAL_MARGIN_S = 2.0  # kept back from the budget for the last write
PROJECTION_FLOOR_S = 20.0  # step 4 (about a second of arithmetic) runs even past the budget


class StepTimeout(BaseException):
    """The step's slice of the budget ran out (a BaseException: no `except Exception` in the
    measured code swallows it)."""


class Terminated(BaseException):
    """SIGTERM or Ctrl-C: stop, write what was measured, exit."""


class StepContext:
    """What a step gets: the plan, its deadline, its result dict (filled as it measures, so a
    cut-off keeps what was done), a line printer and `save()` (rewrite the report files)."""

    def __init__(self, check: Check, number: int, deadline: float, result: dict):
        self.check, self.number, self.deadline, self.result = check, number, deadline, result
        self.plan, self.device, self.out = check.plan, check.plan.device, check.out
        self.completed: list[str] = []
        # the step's verdict from what it has measured so far (for a cut-off step's line)
        self.summarize: Callable[[], str] | None = None

    def partial(self) -> str:
        if self.summarize is not None:
            try:
                return self.summarize()
            except Exception:  # a half-filled result: fall back to the list of what was done
                pass
        return f"kept: {', '.join(self.completed)}" if self.completed else "nothing measured"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def need(self, seconds: float, what: str) -> None:
        """Stop the step as cut off unless `seconds` are left for `what`."""
        if self.left() < seconds:
            raise StepTimeout(f"{self.left():.0f} s left, {what} needs about {seconds:.0f} s")

    def done(self, label: str) -> None:
        self.completed.append(label)
        self.save()

    def save(self) -> None:
        self.check.write()

    def log(self, message: str) -> None:
        print(f"      {message}", flush=True)


class Check:
    def __init__(self, args: argparse.Namespace, plan, out: Path, command: str):
        import torch

        from .timing import machine_info

        self.args, self.plan, self.out = args, plan, out
        self.t0 = time.monotonic()
        self.end = self.t0 + args.budget_s - FINAL_MARGIN_S
        device = plan.device
        self.report: dict = {
            "schema": SCHEMA, "command": command, "mode": plan.kind, "device": str(device),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "budget_s": args.budget_s, "elapsed_s": 0.0, "finished": False, "exit_status": None,
            "machine": machine_info(device), "gpus_visible": self.gpus_visible(),
            "torch_flags": _torch_flags(), "threads": torch.get_num_threads(),
            "plan": _plain(asdict(plan)),
            "notes": list(plan.notes),
            "steps": [{"step": n, "name": name, "status": "not run", "verdict": "not run yet",
                       "seconds": None, "slice_s": None, "result": {}}
                      for n, name in STEP_NAMES.items()],
            "projected": None,
        }
        if not plan.cuda:
            self.report["notes"].append(
                "no GPU figures exist from this run: it ran on the CPU")

    @staticmethod
    def gpus_visible() -> int:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    # -- files ----------------------------------------------------------------------------------
    def write(self) -> None:
        from explore.core.files import atomic_write

        from .gpu_report import markdown

        self.report["elapsed_s"] = round(time.monotonic() - self.t0, 2)
        text = json.dumps(self.report, indent=2, default=str)
        atomic_write(self.out / "gpu-check.json", lambda f: f.write(text.encode()))
        try:
            md = markdown(self.report)
        except Exception as e:  # never lose the files to a report of an unexpected shape
            md = "\n".join(["# GPU check", "", f"(the full report could not be drawn: "
                             f"{type(e).__name__}: {e}; gpu-check.json has everything)", "",
                             "| step | status | verdict |", "|---|---|---|"]
                            + [f"| {s['step']}. {s['name']} | {s['status']} | {s['verdict']} |"
                               for s in self.report["steps"]]) + "\n"
        atomic_write(self.out / "gpu-check.md", lambda f: f.write(md.encode()))

    # -- steps ----------------------------------------------------------------------------------
    def slice_for(self, number: int) -> float:
        """The step's share of what is left, by the plan's weights of the steps still to run."""
        left = self.end - time.monotonic()
        weights = self.plan.weights
        rest = sum(weights[n] for n in STEP_NAMES if n >= number)
        share = max(0.0, left * weights[number] / rest)
        if number == 4:  # arithmetic of ~1 s: the projection always gets to run
            share = max(share, PROJECTION_FLOOR_S)
        return share

    def run_step(self, number: int, fn: Callable[[StepContext], tuple[str, str]]) -> None:
        entry = self.report["steps"][number - 1]
        name = STEP_NAMES[number]
        slice_s = self.slice_for(number)
        entry.update(status="running", verdict="running", slice_s=round(slice_s, 1))
        ctx = StepContext(self, number, time.monotonic() + slice_s, entry["result"])
        print(f"[{number}/5] {name}: running (slice {slice_s:.0f} s of the budget) ...",
              flush=True)
        t0 = time.monotonic()
        try:
            with _alarm(slice_s):
                status, verdict = fn(ctx)
        except StepTimeout as e:
            status = "cut off"
            verdict = (f"cut off by the budget after {time.monotonic() - t0:.0f} s ({e}); "
                       f"{ctx.partial()}")
        except Terminated:
            entry.update(status="cut off", seconds=round(time.monotonic() - t0, 2),
                         verdict=f"terminated (SIGTERM or Ctrl-C) while running; "
                                 f"{ctx.partial()}", completed=ctx.completed)
            raise
        except Exception as e:  # a failed step: say what, go on with the next
            status, verdict = "fail", f"error: {type(e).__name__}: {_one_line(e)}"
            entry["traceback"] = traceback.format_exc(limit=12)
        entry.update(status=status, verdict=verdict, seconds=round(time.monotonic() - t0, 2),
                     completed=ctx.completed)
        self.write()
        print(f"[{number}/5] {name}: {status}: {verdict}", flush=True)

    def run(self) -> int:
        from .gpu_correctness import step_correctness
        from .gpu_pool import step_pool
        from .gpu_projection import step_projection
        from .gpu_resume import step_resume
        from .gpu_throughput import step_throughput

        steps = {1: step_correctness, 2: step_resume, 3: step_throughput, 4: step_projection,
                 5: step_pool}
        self.write()
        try:
            for number, fn in steps.items():
                self.run_step(number, fn)
        except Terminated:
            for entry in self.report["steps"]:
                if entry["status"] in ("not run", "running"):
                    entry.update(status="not run", verdict="not run: terminated before it")
            self.report["exit_status"] = 143
            self.write()
            print(f"terminated: what was measured is in {self.out}/gpu-check.json and .md",
                  flush=True)
            return 143
        failed = [e["name"] for e in self.report["steps"] if e["status"] == "fail"]
        status = 1 if failed else 0
        self.report.update(finished=True, exit_status=status)
        self.write()
        cut = [e["name"] for e in self.report["steps"] if e["status"] == "cut off"]
        print(f"gpu-check: {len(STEP_NAMES) - len(failed) - len(cut)} of {len(STEP_NAMES)} steps "
              f"complete" + (f", cut off: {', '.join(cut)}" if cut else "")
              + (f", FAILED: {', '.join(failed)}" if failed else "")
              + f" in {time.monotonic() - self.t0:.0f} s; {self.out / 'gpu-check.md'}",
              flush=True)
        return status


@contextlib.contextmanager
def _alarm(seconds: float):
    """Raise StepTimeout in the main thread once `seconds` have passed (SIGALRM)."""
    def ring(signum, frame):
        raise StepTimeout("its slice of the budget ran out mid-measurement")

    if not hasattr(signal, "setitimer"):
        yield
        return
    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(0.01, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _terminate(signum, frame):
    raise Terminated(signal.Signals(signum).name)


def _torch_flags() -> dict:
    import torch

    return {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else "")[:300]


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (int, float, str, bool)) or x is None:
        return x
    return str(x)


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
    import torch

    from explore.core.devices import resolve_device
    from explore.core.errors import UserError

    from .gpu_plan import make_plan

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
    repo = str(Path(__file__).resolve().parent.parent)  # submitit's jobs import bench from it
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


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
