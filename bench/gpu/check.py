"""The GPU check's run: its report (the dict behind gpu-check.json and .md), the budget shared out
among the five steps (unused time passes on to the next), each step run in its slice under an
alarm, and the report files rewritten (atomically) after every step and every measurement inside
one. The command line is bench.gpu.cli.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from explore.core.files import atomic_write

from ..common.machine import describe_machine
from .context import STEP_NAMES, Outcome, StepContext, StepTimeout, Terminated
from .correctness import step_correctness
from .ddp import step_ddp
from .plan import Plan
from .pool import step_pool
from .projection import step_projection
from .report import markdown
from .resume import step_resume
from .throughput import step_throughput

SCHEMA = "gpu-check-v1"
FINAL_MARGIN_S = 2.0  # kept back from the budget for the last write
PROJECTION_FLOOR_S = 20.0  # step 4 (about a second of arithmetic) runs even past the budget


class Check:
    """One run of the check: the report (JSON-ready), the budget and its slices, the report
    files, and the five steps run in turn."""

    def __init__(self, args: argparse.Namespace, plan: Plan, out: Path, command: str):
        self.args, self.plan, self.out = args, plan, out
        self.t0 = time.monotonic()
        self.end = self.t0 + args.budget_s - FINAL_MARGIN_S
        device = plan.device
        self.report: dict = {
            "schema": SCHEMA, "command": command, "mode": plan.kind, "device": str(device),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "budget_s": args.budget_s, "elapsed_s": 0.0, "finished": False, "exit_status": None,
            "machine": describe_machine(device), "gpus_visible": self.gpus_visible(),
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
        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    # -- files ----------------------------------------------------------------------------------
    def write(self) -> None:
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

    def run_step(self, number: int, fn: Callable[[StepContext], Outcome]) -> None:
        entry = self.report["steps"][number - 1]
        name = STEP_NAMES[number]
        slice_s = self.slice_for(number)
        entry.update(status="running", verdict="running", slice_s=round(slice_s, 1))
        ctx = StepContext(self, number, time.monotonic() + slice_s, entry["result"])
        print(f"[{number}/{len(STEP_NAMES)}] {name}: running (slice {slice_s:.0f} s of the "
              f"budget) ...",
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
        print(f"[{number}/{len(STEP_NAMES)}] {name}: {status}: {verdict}", flush=True)

    def run(self) -> int:
        steps = {1: step_correctness, 2: step_resume, 3: step_throughput, 4: step_projection,
                 5: step_pool, 6: step_ddp}
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


def _torch_flags() -> dict:
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
