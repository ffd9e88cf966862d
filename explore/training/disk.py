"""The disk budget of a training run, checked before its first step.

At the reference size a careless default writes terabytes: a LIFT snapshot (weights + one EMA,
float32) is 468 MB, the resume state with AdamW's moments 936 MB, so snapshots every epoch of a
2000-epoch run would be 936 GB. `plan_disk` counts what the run will still write (snapshots
that stay on disk, the resume state, post-hoc EMA snapshots), `check_disk` compares it with the
free space of the run folder's file system: above it, an error giving both numbers and the
options that write less; above half of it, a warning; always one log line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from explore.core.errors import UserError
from explore.core.files import fmt_bytes, free_bytes, mount_point
from explore.run.checkpoint import DTYPES, tensor_bytes
from explore.run.folder import RunFolder
from explore.training.settings import CheckpointSettings


class DiskBudgetError(UserError):
    """The run would write more than its file system has free."""


@dataclass
class DiskPlan:
    snapshots: int           # snapshots still to write that stay on disk
    snapshot_bytes: int      # each
    resume_bytes: int        # last.pt (counted once more while it is being replaced)
    posthoc_snapshots: int   # power-function EMA snapshots still to write (ema=posthoc)
    posthoc_bytes: int       # each
    every: int
    dtype: str

    @property
    def total(self) -> int:
        return (self.snapshots * self.snapshot_bytes + self.resume_bytes
                + self.posthoc_snapshots * self.posthoc_bytes)

    def describe(self) -> str:
        parts = [f"{self.snapshots} snapshots x {fmt_bytes(self.snapshot_bytes)} "
                 f"({self.dtype}, every {self.every} epochs)",
                 f"resume state {fmt_bytes(self.resume_bytes)}"]
        if self.posthoc_snapshots:
            parts.append(f"{self.posthoc_snapshots} post-hoc EMA snapshots x "
                         f"{fmt_bytes(self.posthoc_bytes)}")
        return f"{fmt_bytes(self.total)} (" + ", ".join(parts) + ")"


def snapshot_epochs(start: int, epochs: int, every: int) -> list[int]:
    """Epochs after `start` (completed) that get a snapshot: every `every`, and the last."""
    return [e for e in range(start + 1, epochs + 1) if e % every == 0 or e == epochs]


def plan_disk(training, checkpoint: CheckpointSettings, run: RunFolder, done_epochs: int,
              epochs: int, steps_per_epoch: int) -> DiskPlan:
    """What the rest of the run writes (`checkpoint`: the run's checkpoint settings)."""
    every, dtype = int(checkpoint.every), str(checkpoint.snapshot_dtype)
    weights = training.weights_state()
    snapshot = tensor_bytes(weights, DTYPES[dtype])
    new = snapshot_epochs(done_epochs, epochs, every)
    if checkpoint.keep_last:  # at most keep_last (+ the protected) stay on disk at the end
        kept = set(new[-int(checkpoint.keep_last):]) | {e for e in new
                                                        if e in set(checkpoint.keep or [])}
        new = sorted(kept)
    params = sum(p.numel() * 4 for p in training.model.parameters() if p.requires_grad)
    resume = tensor_bytes(weights) + 2 * params  # + AdamW's two moments in float32
    ema = training.ema
    posthoc_every = getattr(ema, "snapshot_every", None) if ema is not None else None
    done_steps = done_epochs * steps_per_epoch
    n_posthoc = ((epochs * steps_per_epoch) // posthoc_every - done_steps // posthoc_every
                 if posthoc_every else 0)
    posthoc = tensor_bytes(ema.snapshot()) if n_posthoc else 0
    return DiskPlan(len(new), snapshot, resume, n_posthoc, posthoc, every, dtype)


def check_disk(plan: DiskPlan, run: RunFolder) -> list[tuple[int, str]]:
    """Raise DiskBudgetError above the free space; else the log lines (level, message) to
    print once the run has started: the budget, and a warning above half the free space."""
    fs, free = mount_point(run.path), free_bytes(run.path)
    lines = [(logging.INFO, f"disk budget: this run will write about {plan.describe()} to {fs}; "
                            f"free there: {fmt_bytes(free)}")]
    options = ("checkpoint.every=N (fewer snapshots), checkpoint.snapshot_dtype=bfloat16 (half "
               "the size), checkpoint.keep_last=N (delete older snapshots; checkpoint.keep="
               "[epochs] protects the ones you evaluate), or another hydra.run.dir")
    if plan.total > free:
        raise DiskBudgetError(f"this run would write {plan.describe()} to {fs}, which has only "
                              f"{fmt_bytes(free)} free. Write less: {options}.")
    if plan.total > free / 2:
        lines.append((logging.WARNING, f"this run will fill more than half of the free space on "
                                       f"{fs} ({fmt_bytes(plan.total)} of {fmt_bytes(free)}); to "
                                       f"write less: {options}"))
    return lines
