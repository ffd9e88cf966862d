"""Where a run is, and the two files that keep it (explore.run.checkpoint describes them).

`RunState` is the position of the run: epochs completed, optimizer steps, and, inside the
current epoch, the batches done, their metric sums and the noise generator's state, so a run
stopped mid-epoch continues bit for bit. `Checkpointer` writes the snapshots (every
`checkpoint.every` epochs, pruned to `checkpoint.keep_last`) and the rolling resume state
`last.pt` (every epoch end, every `checkpoint.resume_every_min` minutes, and when SLURM says the
job must stop).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from explore.run import checkpoint as ckpt
from explore.run.folder import RunFolder
from explore.training.settings import TrainSettings
from explore.training.step import Training, rng_state

log = logging.getLogger("explore.train")


@dataclass
class RunState:
    epoch: int = 0                 # epochs completed
    step: int = 0                  # optimizer steps done
    history: list[dict] = field(default_factory=list)  # metrics rows of completed epochs
    batch: int = 0                 # batches done in epoch `epoch + 1` (0: at an epoch boundary)
    sums: dict = field(default_factory=dict)           # their metric sums
    seconds: float = 0.0           # their training time
    noise_state: torch.Tensor | None = None            # the epoch's noise generator after them
    changes: list[dict] = field(default_factory=list)  # settings changed on resume (optim.lr)
    # the run's own history (run.json): starts, resumes, fall-backs, and the environments
    # (explore.run.environment) that trained it, kept in every checkpoint so no start forgets them
    events: list[dict] = field(default_factory=list)
    environments: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "history": self.history,
                "batch": self.batch, "sums": self.sums, "seconds": self.seconds,
                "noise_state": self.noise_state, "changes": self.changes,
                "events": self.events, "environments": self.environments}

    @classmethod
    def from_dict(cls, saved: dict) -> RunState:
        """From a resume state, a snapshot, or a full checkpoint of earlier versions (epoch
        boundary only)."""
        return cls(int(saved["epoch"]), int(saved["step"]), list(saved.get("history", [])),
                   int(saved.get("batch", 0)), dict(saved.get("sums", {})),
                   float(saved.get("seconds", 0.0)), saved.get("noise_state"),
                   list(saved.get("changes", [])), list(saved.get("events", [])),
                   list(saved.get("environments", [])))

    def end_epoch(self, epoch: int, row: dict) -> None:
        self.epoch, self.batch, self.sums, self.seconds, self.noise_state = epoch, 0, {}, 0.0, None
        self.history.append(row)


class Checkpointer:
    """Writes a run's snapshots and its resume state (the `checkpoint` settings)."""

    def __init__(self, run: RunFolder, training: Training, settings: TrainSettings,
                 writes: bool = True):
        c = settings.checkpoint
        self.run, self.training, self.config = run, training, settings.config
        self.writes = writes  # False: a data-parallel rank other than 0, which writes nothing
        self.epochs = int(settings.trainer.epochs)
        self.every, self.keep_last, self.keep = int(c.every), c.keep_last, set(c.keep)
        self.dtype_name = str(c.snapshot_dtype)
        self.dtype = ckpt.check_dtype(self.dtype_name)
        self.resume_every_s = 60.0 * float(c.resume_every_min)
        self.last_save = time.monotonic()

    def _common(self, state: RunState) -> dict:
        return {"config": self.config, "model_kind": self.training.kind}

    def snapshot_due(self, epoch: int) -> bool:
        return epoch % self.every == 0 or epoch == self.epochs

    def save_snapshot(self, state: RunState) -> None:
        """checkpoints/epoch_NNNN.pt: weights and averages (in snapshot_dtype), no optimizer;
        then older snapshots beyond keep_last are deleted (never the `keep` epochs)."""
        if not self.writes:
            return
        weights = ckpt.cast_floating(self.training.weights_state(), self.dtype)
        ckpt.save_checkpoint({**weights, "epoch": state.epoch, "step": state.step,
                              "history": state.history, "changes": state.changes,
                              "events": state.events, "environments": state.environments,
                              "snapshot_dtype": self.dtype_name,
                              **self._common(state)}, self.run.checkpoint(state.epoch))
        self.prune(state.epoch)

    def prune(self, newest: int) -> None:
        if not self.keep_last:
            return
        found = [e for e, _ in self.run.checkpoints() if e <= newest]
        for epoch in found[:-int(self.keep_last)]:
            if epoch not in self.keep:
                self.run.checkpoint(epoch).unlink(missing_ok=True)
                log.info("deleted snapshot epoch %d (checkpoint.keep_last=%s)", epoch,
                         self.keep_last)

    def resume_due(self) -> bool:
        return self.writes and time.monotonic() - self.last_save >= self.resume_every_s

    def save_resume(self, state: RunState) -> None:
        """checkpoints/last.pt: everything needed to continue bit for bit from here."""
        if not self.writes:
            return
        ckpt.save_checkpoint({**self.training.state_dict(), **state.to_dict(), "rng": rng_state(),
                              "kind": "resume", **self._common(state)}, self.run.last)
        self.last_save = time.monotonic()
