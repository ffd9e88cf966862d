"""The training recipe: one run of the study, from its settings to a finished run folder.

    run_dir = train(settings, run_dir)      # explore.train builds `settings` from the config

Reads top to bottom: check, find where the run stands, build what trains, then every epoch
(every full batch, one optimizer step and EMA update each), its metrics row, its snapshot and
the resume state, and what a user watches. What trains and one optimizer step are
explore.training.step; where the run is and its checkpoint files, explore.training.state; how
it starts or resumes, explore.training.start.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import sys
import time
from pathlib import Path

import torch

from explore.core.config import build
from explore.core.files import atomic_write, fmt_bytes, remove_stale_temporaries
from explore.nets.data import ImageSet, to_float
from explore.run import checkpoint as ckpt
from explore.run.environment import describe_environment
from explore.run.folder import RunFolder
from explore.run.lock import RunLock
from explore.run.logfile import log_to
from explore.run.loggers import check_loggers
from explore.training.disk import check_disk, plan_disk
from explore.training.distributed import Ranks
from explore.training.heldout import HeldOutLoss
from explore.training.preemption import StepBoundary
from explore.training.settings import TrainSettings
from explore.training.start import (
    batches_per_epoch,
    record_start,
    restore,
    resume_point,
    write_run_start,
)
from explore.training.state import Checkpointer, RunState
from explore.training.step import (
    NonFiniteLossError,
    Training,
    build_training,
    epoch_generators,
    seed_everything,
    train_step,
)
from explore.training.watch import Watch

log = logging.getLogger("explore.train")


# -- the recipe ---------------------------------------------------------------------------------
def train(settings: TrainSettings, run_dir: str | Path, command: list[str] | None = None
          ) -> Path:
    """Train (or resume) one run in `run_dir`; returns the run folder. `command`: the
    overrides it was started with, for the advice of error messages. Started by torchrun (or as
    SLURM tasks) it trains data-parallel, every rank calling this (explore.training
    .distributed); rank 0 alone writes the run folder."""
    s = settings
    run = RunFolder(run_dir)
    ranks, device = Ranks.from_environment(s.device)
    try:
        return _train(s, run, ranks, device, command)
    finally:
        ranks.close()


def _train(s: TrainSettings, run: RunFolder, ranks: Ranks, device: torch.device,
           command: list[str] | None) -> Path:
    lock, start = RunLock(run.lock), None
    try:  # every check before anything is written; on every rank, which all agree to go on
        check_loggers(s.logger)  # an optional package that is missing: the install command
        if ranks.main:
            lock.check()  # a second writer stops here, before anything is loaded or written
        ranks.check_batch(int(s.trainer.batch_size), int(s.trainer.grad_accum))
        start = _start(s, run, ranks, device, command)
    except Exception as error:
        ranks.agree(error)
    ranks.agree(None)
    data, training, state, found, notes, environment, budget = start
    steps_per_epoch, epochs = batches_per_epoch(data, s.trainer.batch_size), s.trainer.epochs
    # from here on rank 0 writes the run folder (holding its lock); the other ranks only train
    with contextlib.ExitStack() as writing:
        if ranks.main:
            writing.enter_context(lock)
            writing.enter_context(log_to(run.train_log))
            _write_start(s, run, lock, budget, found, state, environment, notes, training, data,
                         steps_per_epoch)
        if state.epoch >= epochs:
            if ranks.main:
                log.info("%s is already trained to epoch %d of %d: nothing to do", run.path,
                         state.epoch, epochs)
            return run.path
        saver = Checkpointer(run, training, s, writes=ranks.main)
        images = data.images.to(device)
        heldout = HeldOutLoss.of(data, training) if ranks.main else None  # overfitting
        training.model.train()
        watching = Watch(s, run, training, steps_per_epoch) if ranks.main else None
        with StepBoundary() as stop, watching or contextlib.nullcontext() as watch:
            for epoch in range(state.epoch + 1, epochs + 1):
                row = train_epoch(training, images, s, epoch, state, saver, stop, command)
                if heldout is not None:
                    row.update(heldout.metrics())
                state.end_epoch(epoch, row)
                if not ranks.main:
                    continue
                write_metrics(run.metrics, state.history)
                log.info("epoch %d/%d  step %d  loss %.4f  %.1f img/s%s", epoch, epochs,
                         state.step, row["loss"], row["images_per_s"],
                         f"  EMA share {row['ema_share']:.2f}" if "ema_share" in row else "")
                if saver.snapshot_due(epoch):
                    saver.save_snapshot(state)
                saver.save_resume(state)
                watch.end_epoch(epoch, row, state.step)  # loggers; raw-vs-EMA sample grids
        ranks.barrier()  # every rank ends with the run folder complete
        if ranks.main:
            log.info("done: %s", run.path)
    return run.path


def _start(s: TrainSettings, run: RunFolder, ranks: Ranks, device: torch.device,
           command: list[str] | None):
    """What the run trains and where it stands, read and built (nothing written)."""
    seed_everything(s.seed)
    found, notes = resume_point(s, run)  # (path, state) to continue from, or None
    data: ImageSet = build(s.data)
    steps_per_epoch, epochs = batches_per_epoch(data, s.trainer.batch_size), s.trainer.epochs
    training = build_training(s, device, total_steps=epochs * steps_per_epoch, ranks=ranks)
    state = restore(training, found, s) if found is not None else RunState()
    environment = describe_environment(device)  # what makes this start: run.json records it
    # the Hydra overrides: under a study or SLURM, `command` is submitit's worker, not these
    environment["overrides"] = list(command or [])
    if ranks.distributed:
        environment["ranks"] = ranks.world
    budget = check_disk(plan_disk(training, s.checkpoint, run, state.epoch, epochs,
                                  steps_per_epoch), run) if ranks.main else []
    return data, training, state, found, notes, environment, budget


def _write_start(s: TrainSettings, run: RunFolder, lock: RunLock, budget, found, state,
                 environment: dict, notes: list[str], training: Training, data: ImageSet,
                 steps_per_epoch: int) -> None:
    """The first lines of train.log, config.yaml and run.json (rank 0, holding the lock)."""
    if lock.describe_takeover():
        log.warning("%s", lock.describe_takeover())
    for level, line in budget:
        log.log(level, line)
    cleaned, size = remove_stale_temporaries(run.written_folders())
    if cleaned:
        log.info("removed %d temporary files (%s) left by an interrupted write", cleaned,
                 fmt_bytes(size))
    if found is not None:
        log.info("resuming %s from %s (epoch %d, step %d%s)", run.path, found[0].name,
                 state.epoch, state.step, f", batch {state.batch}" if state.batch else "")
    if training.ranks.distributed:
        log.info("data-parallel over %d ranks (%s): global batch %d, %d per rank",
                 training.ranks.world, "nccl" if training.device.type == "cuda" else "gloo",
                 s.trainer.batch_size, s.trainer.batch_size // training.ranks.world)
    record_start(state, environment, found, notes)
    write_run_start(run, s, training, data, steps_per_epoch, state)


def train_epoch(training: Training, images: torch.Tensor, settings: TrainSettings, epoch: int,
                state: RunState, saver: Checkpointer, stop: StepBoundary,
                command: list[str] | None) -> dict:
    """One epoch (or its rest, after a mid-epoch resume): every full batch of a permutation
    drawn from (seed, epoch); returns its metrics row."""
    t = settings.trainer
    batch_size, steps = int(t.batch_size), len(images) // int(t.batch_size)
    order_gen, noise_gen = epoch_generators(settings.seed, epoch, training.device)
    perm = torch.randperm(len(images), generator=order_gen).to(training.device)
    if state.batch:  # resumed inside this epoch: the noise stream continues where it stopped
        noise_gen.set_state(state.noise_state)
    ema, t0, start = training.ema, time.perf_counter() - state.seconds, state.batch
    bar = _progress(range(start, steps), epoch, t.epochs, t.progress and saver.writes, steps)
    for k in bar:
        batch = to_float(images[perm[k * batch_size:(k + 1) * batch_size]])
        parts = train_step(training, batch, noise_gen)
        bad = parts.pop("nonfinite")
        if bad:
            raise non_finite_error(bad, parts, epoch, state, k, steps, saver.run,
                                   settings.optim.lr, command)
        parts.pop("skipped")
        state.step, state.batch = state.step + 1, k + 1
        for name, value in parts.items():
            state.sums[name] = state.sums.get(name, 0.0) + value
        if ema is not None and ema.snapshot_due() and saver.writes:  # post-hoc EMA snapshots
            ckpt.save_file(ema.snapshot(), saver.run.snapshot(ema.step))
        # SLURM's signal reaches the ranks at different steps: they stop at the same one
        stopping = training.ranks.any(stop.pending) if stop.armed else False
        if k + 1 < steps and (saver.resume_due() or stopping):
            state.noise_state, state.seconds = noise_gen.get_state(), time.perf_counter() - t0
            saver.save_resume(state)
        if stopping:
            stop.hand_over()  # submitit: checkpoint(), requeue, exit
        if k % 10 == 0 or k == steps - 1:
            bar.set_postfix(loss=f"{state.sums['loss'] / (k + 1):.4f}", refresh=False)
    seconds = time.perf_counter() - t0
    row = {"epoch": epoch, "step": state.step}
    row.update({name: value / steps for name, value in state.sums.items() if name != "grad_norm"})
    row.update(lr=training.optimizer.param_groups[0]["lr"], seconds=round(seconds, 3),
               images_per_s=round(steps * batch_size / seconds, 2))
    if ema is not None:
        row.update(ema.metrics())  # ema_*, ema_*@<decay>, phema_*@<sigma_rel>
    return row


def non_finite_error(bad: str, parts: dict, epoch: int, state: RunState, k: int, steps: int,
                     run: RunFolder, lr: float, command: list[str] | None
                     ) -> NonFiniteLossError:
    """What happened, and the exact command that continues from the last good state with half
    the learning rate `lr` (optim.lr may change on resume; the change is recorded)."""
    last = run.last if run.last.is_file() else None
    lr = float(lr) / 2
    kept = [o for o in (command or []) if o.split("=", 1)[0].lstrip("+~") not in
            ("resume", "optim.lr", "hydra.run.dir")]
    again = " ".join(["python -m explore.train", *(kept or ["<your overrides>"]), "resume=true",
                      f"optim.lr={lr:g}", f"hydra.run.dir={run.path}"])
    where = (f"The resume state {last} (epoch {state.epoch} done) is from before it"
             if last else "Nothing was saved yet; start again with a lower optim.lr")
    return NonFiniteLossError(
        f"non-finite {bad} ({parts[bad.replace(' ', '_')]}) at epoch {epoch}, step "
        f"{state.step + 1} (batch {k + 1}/{steps}); the weights and the EMA were not updated "
        f"with it. {where}. To continue with half the learning rate:\n    {again}\n"
        f"(or add trainer.precision=32 if it trained in bf16/fp16).")


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Rewrite metrics.csv from the history (atomically: it is small, and a resumed run then
    never keeps rows of an epoch that died before its resume state)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def _progress(it, epoch: int, epochs: int, enabled: bool, total: int):
    from tqdm import tqdm

    return tqdm(it, desc=f"epoch {epoch}/{epochs}", disable=not enabled, leave=False,
                dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30,
                initial=total - len(it), total=total)
