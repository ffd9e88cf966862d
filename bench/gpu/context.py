"""What every step of the GPU check shares, below the check that runs them: the step names, the
exceptions that stop a step, the context a step measures in (`StepContext`) and what it returns
(`Outcome`).

A step is a function `step(ctx: StepContext) -> Outcome`: it fills `ctx.result` as it measures
(so a step that is cut off keeps what it did), calls `ctx.need(seconds, what)` before anything
long, `ctx.done(label)` after each measurement (which rewrites the report files), and returns
(status, verdict): status "ok", "warn", "fail" or "skipped" ("cut off" is the check's, when
StepTimeout ends a step), verdict one line of what it found.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

STEP_NAMES = {1: "correctness", 2: "resume", 3: "throughput", 4: "projection", 5: "pool",
              6: "ddp"}

Outcome = tuple[str, str]  # (status, verdict)


class StepTimeout(BaseException):
    """The step's slice of the budget ran out (a BaseException: no `except Exception` in the
    measured code swallows it)."""


class Terminated(BaseException):
    """SIGTERM or Ctrl-C: stop, write what was measured, exit."""


class CheckRun(Protocol):
    """What a step sees of the running check (bench.gpu.check.Check)."""

    args: object       # the command line (gpu_counts: the projection's GPU counts)
    plan: object       # bench.gpu.plan.Plan
    out: Path          # the output folder
    report: dict       # the whole report (step 4 reads step 3's result from it)

    def write(self) -> None: ...


class StepContext:
    """What a step gets: the plan, its deadline, its result dict (filled as it measures, so a
    cut-off keeps what was done), a line printer and `save()` (rewrite the report files)."""

    def __init__(self, check: CheckRun, number: int, deadline: float, result: dict):
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
