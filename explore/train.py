"""Train one model of the study, with or without EMA.

    python -m explore.train model=lift ema=on device=1
    python -m explore.train model=baseline ema=off data=folder data.root=/data/afhq64
    python -m explore.train model=lift ema=on device=cpu experiment=smoke
    python -m explore.train model=lift ema=on resume=true hydra.run.dir=outputs/my_run
    python -m explore.train --help            # options;  --cfg job: the composed config

`train(cfg, run_dir)` is the recipe and what tests and launchers call; `main` is a thin Hydra
wrapper. What it writes is the run folder of `explore.runfiles`; what trains is the `Training`
of `explore.training`.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from . import checkpoint as ckpt
from .config import CONF_DIR, build, to_plain
from .data import DataError, ImageSet, to_float
from .devices import resolve_device
from .ema import averaging_window
from .errors import ConfigError
from .files import atomic_write
from .runfiles import RunFolder, RunInfo, write_run_info
from .training import (
    NonFiniteLossError,
    Training,
    build_training,
    check_config,
    epoch_generators,
    rng_state,
    seed_everything,
    set_rng_state,
    train_step,
)

log = logging.getLogger("explore.train")

# Settings that define what a run *is*: resuming with any of them changed would silently
# produce a different experiment under the old name.
IDENTITY_KEYS = ("model", "data", "diffusion", "ema", "optim", "seed", "trainer.batch_size",
                 "trainer.grad_accum", "trainer.grad_clip")


@dataclass
class RunState:
    """Where the run is; checkpointed with the Training's state."""

    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)

    @classmethod
    def from_state(cls, saved: dict) -> RunState:
        return cls(saved["epoch"], saved["step"], list(saved.get("history", [])))


# -- the recipe ---------------------------------------------------------------------------------
def train(cfg: DictConfig, run_dir: str | Path) -> Path:
    """Train (or resume) one run in `run_dir`; returns the run folder."""
    run = RunFolder(run_dir)
    check_config(cfg)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    found = resume_point(cfg, run)  # (path, state) to continue from, or None
    data: ImageSet = build(cfg.data)
    steps_per_epoch, epochs = batches_per_epoch(data, cfg.trainer.batch_size), cfg.trainer.epochs
    training = build_training(cfg, device, total_steps=epochs * steps_per_epoch)
    state = RunState()
    if found is not None:
        path, saved = found
        training.load_state_dict(saved, source=path)
        state = RunState.from_state(saved)
        set_rng_state(saved["rng"])
        log.info("resuming %s from %s (epoch %d, step %d)", run.path, path.name, state.epoch,
                 state.step)
    write_run_start(run, cfg, training, data, steps_per_epoch, device)
    if state.epoch >= epochs:
        log.info("%s is already trained to epoch %d of %d: nothing to do", run.path,
                 state.epoch, epochs)
        return run.path

    images = data.images.to(device)
    training.model.train()
    for epoch in range(state.epoch + 1, epochs + 1):
        row = train_epoch(training, images, cfg, epoch, state, run)
        state.epoch = epoch
        state.history.append(row)
        write_metrics(run.metrics, state.history)
        log.info("epoch %d/%d  step %d  loss %.4f  %.1f img/s%s", epoch, epochs, state.step,
                 row["loss"], row["images_per_s"],
                 f"  EMA share {row['ema_share']:.2f}" if "ema_share" in row else "")
        if epoch % cfg.checkpoint.every == 0 or epoch == epochs:
            ckpt.save_checkpoint({**training.state_dict(), "epoch": state.epoch,
                                  "step": state.step, "rng": rng_state(),
                                  "config": to_plain(cfg), "history": state.history,
                                  "model_kind": training.kind}, run.checkpoint(epoch))
    log.info("done: %s", run.path)
    return run.path


def train_epoch(training: Training, images: torch.Tensor, cfg: DictConfig, epoch: int,
                state: RunState, run: RunFolder) -> dict:
    """One epoch: every full batch of a permutation drawn from (seed, epoch); the metrics row."""
    batch_size, steps = int(cfg.trainer.batch_size), len(images) // int(cfg.trainer.batch_size)
    order_gen, noise_gen = epoch_generators(cfg.seed, epoch, training.device)
    perm = torch.randperm(len(images), generator=order_gen).to(training.device)
    ema, sums, t0 = training.ema, {}, time.perf_counter()
    bar = _progress(range(steps), epoch, cfg.trainer.epochs, cfg.trainer.progress)
    for k in bar:
        batch = to_float(images[perm[k * batch_size:(k + 1) * batch_size]])
        parts = train_step(training, batch, noise_gen)
        bad = parts.pop("nonfinite")
        if bad:
            raise non_finite_error(bad, parts, epoch, state.step + 1, k, steps, run)
        parts.pop("skipped")
        state.step += 1
        if ema is not None and ema.snapshot_due():  # post-hoc EMA: a snapshot every N steps
            ckpt.save_file(ema.snapshot(), run.snapshot(ema.step))
        for name, value in parts.items():
            sums[name] = sums.get(name, 0.0) + value
        if k % 10 == 0 or k == steps - 1:
            bar.set_postfix(loss=f"{sums['loss'] / (k + 1):.4f}", refresh=False)
    seconds = time.perf_counter() - t0
    row = {"epoch": epoch, "step": state.step}
    row.update({name: value / steps for name, value in sums.items() if name != "grad_norm"})
    row.update(lr=training.optimizer.param_groups[0]["lr"], seconds=round(seconds, 3),
               images_per_s=round(steps * batch_size / seconds, 2))
    if ema is not None:
        row.update(ema.metrics())  # ema_*, ema_*@<decay>, phema_*@<sigma_rel>
    return row


def non_finite_error(bad: str, parts: dict, epoch: int, step: int, k: int, steps: int,
                     run: RunFolder) -> NonFiniteLossError:
    last = run.checkpoints()[-1][1] if run.checkpoints() else None
    return NonFiniteLossError(
        f"non-finite {bad} ({parts[bad.replace(' ', '_')]}) at epoch {epoch}, step {step} "
        f"(batch {k + 1}/{steps}); the weights and the EMA were not updated with it. Last good "
        f"checkpoint: {last if last else 'none yet'}. Lower optim.lr or use "
        f"trainer.precision=32, then continue with resume=true.")


# -- starting a run -----------------------------------------------------------------------------
def resume_point(cfg: DictConfig, run: RunFolder) -> tuple[Path, dict] | None:
    """The checkpoint to continue from (resume=true), after checking it is this experiment;
    a run folder that already holds checkpoints without resume=true is an error."""
    resume = str(cfg.resume).lower() == "true"
    if not resume:
        if run.checkpoints():
            raise ConfigError(f"{run.path} already holds checkpoints (newest: "
                              f"{run.checkpoints()[-1][1].name}); pass resume=true to continue "
                              f"that run, or choose another hydra.run.dir for a new one")
        return None
    found = ckpt.latest_valid_checkpoint(run.path, log=log.warning)
    if found is None:
        log.info("resume=true but %s has no checkpoint yet: starting from scratch", run.path)
        return None
    diffs = config_differences(found[1].get("config") or {}, to_plain(cfg))
    if diffs:
        raise ConfigError(f"resume=true, but the config differs from the one {found[0]} "
                          f"was trained with: {'; '.join(diffs)}. Start a new run folder "
                          f"for a different experiment.")
    return found


def config_differences(old: dict, new: dict) -> list[str]:
    """The IDENTITY_KEYS that differ, as "key: old -> new"."""
    if old and "diffusion" not in old:  # saved before the schedule was recorded: the cosine one
        old = {**old, "diffusion": OmegaConf.to_container(
            OmegaConf.load(CONF_DIR / "diffusion" / "cosine.yaml"))}
    diffs = []
    for key in IDENTITY_KEYS:
        a, b = old, new
        for part in key.split("."):
            a = a.get(part) if isinstance(a, dict) else None
            b = b.get(part) if isinstance(b, dict) else None
        if a != b:
            diffs.append(f"{key}: {a} -> {b}")
    return diffs


def batches_per_epoch(data: ImageSet, batch_size: int) -> int:
    steps = len(data) // int(batch_size)
    if steps == 0:
        raise DataError(f"{data.name} has {len(data)} images, fewer than one batch of "
                        f"trainer.batch_size={batch_size}")
    return steps


def write_run_start(run: RunFolder, cfg: DictConfig, training: Training, data: ImageSet,
                    steps_per_epoch: int, device: torch.device) -> None:
    """config.yaml and run.json, and the start of the log: what this run is."""
    ema, epochs = training.ema, int(cfg.trainer.epochs)
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write(run.config, lambda f: f.write(OmegaConf.to_yaml(to_plain(cfg)).encode()))
    write_run_info(run.path, RunInfo(
        run=run.name, model=training.kind, seed=int(cfg.seed),
        ema_decay=ema.decay if ema is not None else None,
        ema_decays=ema.decays if ema is not None else [],
        ema_sigma_rels=ema.sigma_rels if ema is not None else [],
        schedule=training.schedule.describe(), dataset=data.name, image_size=data.image_size,
        num_images=len(data), epochs=epochs, steps_per_epoch=steps_per_epoch,
        batch_size=int(cfg.trainer.batch_size), device=str(device)))
    model, schedule = training.model, training.schedule
    log.info("%s: %s, %.2fM parameters, %d images (%s), %d steps/epoch, device %s, noise "
             "schedule %s (alpha_bar %.4g .. %.3g)", run.path, type(model).__name__,
             sum(p.numel() for p in model.parameters()) / 1e6, len(data), data.name,
             steps_per_epoch, device, schedule.name, schedule.alpha_bar[0],
             schedule.alpha_bar[-1])
    if ema is not None:
        describe_ema(ema, steps_per_epoch, epochs)


def describe_ema(ema, steps_per_epoch: int, total_epochs: int) -> None:
    """Print every tracked average's window (lag), and warn when an EMA's window is long for the
    planned run: an EMA evaluated while it is still mostly its initial weights hides what
    training achieved."""
    total_steps = steps_per_epoch * total_epochs
    for track in ema.tracks:
        if track.kind == "phema":  # a power profile keeps a fixed fraction of the run
            log.info("%s: power-function EMA, gamma %.2f; window sigma_rel x t = %.0f optimizer "
                     "steps = %.2f epochs at the end of the run (%d steps)", track.name,
                     track.gamma, track.sigma_rel * total_steps,
                     track.sigma_rel * total_epochs, total_steps)
            continue
        window = averaging_window(track.decay)
        log.info("%s: averaging window %.0f optimizer steps = %.2f epochs "
                 "(%d steps/epoch; run: %d epochs = %d steps)", track.name, window,
                 window / steps_per_epoch, steps_per_epoch, total_epochs, total_steps)
        share = track.planned_share(total_steps)
        if window > total_steps / 3 and share < 1:
            log.warning("EMA window (%.0f steps) is longer than a third of the planned run "
                        "(%d steps): at the end only %.0f%% of the EMA comes from trained "
                        "weights, the rest is the initialisation. Its samples will hide "
                        "training progress; lower ema.decay (e.g. %s) or train longer.", window,
                        total_steps, 100 * share, _suggest_decay(total_steps))


def _suggest_decay(total_steps: int) -> float:
    for d in (0.9999, 0.999, 0.99, 0.9):
        if averaging_window(d) <= total_steps / 10:
            return d
    return 0.9


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Rewrite metrics.csv from the history (atomically: it is small, and a resumed run then
    never keeps rows of an epoch that died before its checkpoint)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def _progress(it, epoch: int, epochs: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(it, desc=f"epoch {epoch}/{epochs}", disable=not enabled, leave=False,
                dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)


def _run(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    train(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    from .cli import hydra_entry

    hydra_entry("train", _run)()
