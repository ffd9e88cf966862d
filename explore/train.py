"""Train one model of the study, with or without EMA.

    python -m explore.train model=lift ema=on device=1
    python -m explore.train model=baseline ema=off data=folder data.root=/data/afhq64
    python -m explore.train model=lift ema=on device=cpu experiment=smoke
    python -m explore.train model=lift ema=on resume=true hydra.run.dir=outputs/my_run
    python -m explore.train --help            # options;  --cfg job: the composed config

`train(cfg, run_dir)` is the recipe and what tests and launchers call; `main` is a thin Hydra
wrapper. The run folder holds: config.yaml (resolved), run.json (what analysis needs), metrics.csv
(one row per epoch), checkpoints/epoch_NNNN.pt (all run state), and Hydra's train.log.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from . import checkpoint as ckpt
from .config import CONF_DIR, build, register_resolvers, to_plain
from .data import DataError, ImageSet, to_float
from .devices import resolve_device, use_channels_last
from .diffusion import loss_fn_for
from .ema import EMA, SNAPSHOT_DIR, averaging_window, snapshot_path
from .errors import ConfigError, UserError
from .files import atomic_write

log = logging.getLogger("explore.train")

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LR_SCHEDULES = ("constant", "cosine")
# Settings that define what a run *is*: resuming with any of them changed would silently
# produce a different experiment under the old name.
IDENTITY_KEYS = ("model", "data", "diffusion", "ema", "optim", "seed", "trainer.batch_size",
                 "trainer.grad_accum", "trainer.grad_clip")


class NonFiniteLossError(UserError):
    """Training produced a NaN/inf loss; nothing from that step reached the weights or EMA."""


@dataclass
class RunState:
    """Everything that changes while training; checkpointed as one dict."""

    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)


# -- config checks ----------------------------------------------------------------------------
def check_config(cfg: DictConfig) -> None:
    t = cfg.trainer
    if str(t.precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={t.precision!r}: use one of {list(PRECISIONS)}")
    if cfg.optim.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"optim.lr_schedule={cfg.optim.lr_schedule!r}: use one of "
                          f"{list(LR_SCHEDULES)}")
    for key in ("epochs", "batch_size", "grad_accum"):
        if int(t[key]) < 1:
            raise ConfigError(f"trainer.{key}={t[key]} must be >= 1")
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"trainer.batch_size={t.batch_size} is not divisible by "
                          f"trainer.grad_accum={t.grad_accum}")
    if int(cfg.checkpoint.every) < 1:
        raise ConfigError(f"checkpoint.every={cfg.checkpoint.every} must be >= 1")
    if cfg.model.image_size != cfg.data.image_size:
        raise ConfigError(f"data.image_size={cfg.data.image_size} differs from "
                          f"model.image_size={cfg.model.image_size}")
    if str(cfg.resume).lower() not in ("true", "false"):
        raise ConfigError(f"resume={cfg.resume!r}: use true or false")


def ema_enabled(cfg: DictConfig) -> bool:
    return cfg.get("ema") is not None and bool(cfg.ema.get("_target_"))


# -- building blocks ----------------------------------------------------------------------------
def build_lr_schedule(optimizer, name: str, total_steps: int, warmup_steps: int = 0):
    """LambdaLR stepped once per optimizer step: constant, or cosine to 0 over the run."""
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_generators(seed: int, epoch: int, device: torch.device):
    """Randomness of one epoch, derived from (seed, epoch) alone: the batch order (CPU) and the
    timesteps/noise (on the device). A run resumed at an epoch boundary therefore draws exactly
    what an uninterrupted run draws."""
    base = (int(seed) * 1_000_003 + int(epoch)) % (2**63)
    order = torch.Generator().manual_seed(base)
    noise = torch.Generator(device=device).manual_seed(base ^ 0x5EED)
    return order, noise


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(state["python"]) if not isinstance(state["python"], tuple)
                    else state["python"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # another GPU count than when saved
            torch.cuda.set_rng_state_all(state["cuda"])


def describe_ema(ema: EMA, steps_per_epoch: int, total_epochs: int) -> None:
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


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def _config_differences(old: dict, new: dict) -> list[str]:
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


# -- the recipe ---------------------------------------------------------------------------------
def train(cfg: DictConfig, run_dir: str | Path) -> Path:
    """Train (or resume) one run in `run_dir`; returns the run folder."""
    run_dir = Path(run_dir)
    check_config(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    # resume first decides whether there is anything to do
    resume = str(cfg.resume).lower() == "true"
    found = ckpt.latest_valid_checkpoint(run_dir, log=log.warning) if resume else None
    if not resume and ckpt.list_checkpoints(run_dir):
        last = ckpt.list_checkpoints(run_dir)[-1][1]
        raise ConfigError(f"{run_dir} already holds checkpoints (newest: {last.name}); pass "
                          f"resume=true to continue that run, or choose another "
                          f"hydra.run.dir for a new one")
    if found is not None:
        diffs = _config_differences(found[1].get("config") or {}, to_plain(cfg))
        if diffs:
            raise ConfigError(f"resume=true, but the config differs from the one {found[0]} "
                              f"was trained with: {'; '.join(diffs)}. Start a new run folder "
                              f"for a different experiment.")

    data: ImageSet = build(cfg.data)
    schedule = build(cfg.diffusion)
    model = build(cfg.model).to(device)
    channels_last = use_channels_last(cfg.trainer.channels_last, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(data) // cfg.trainer.batch_size
    if steps_per_epoch == 0:
        raise DataError(f"{data.name} has {len(data)} images, fewer than one batch of "
                        f"trainer.batch_size={cfg.trainer.batch_size}")
    epochs = int(cfg.trainer.epochs)
    optimizer = build(cfg.optim.optimizer)(params=model.parameters())
    scheduler = build_lr_schedule(optimizer, cfg.optim.lr_schedule, epochs * steps_per_epoch,
                                  int(cfg.optim.warmup_steps))
    precision = PRECISIONS[str(cfg.trainer.precision)]
    scaler = torch.amp.GradScaler(device.type, enabled=precision is torch.float16)
    ema: EMA | None = build(cfg.ema, model=model) if ema_enabled(cfg) else None
    if ema is not None:  # a post-hoc EMA snapshots to <run>/phema/, auto: over the planned run
        ema.plan(epochs * steps_per_epoch)
    state = RunState()

    if found is not None:
        path, saved = found
        model.load_state_dict(saved["model_state"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["lr_schedule"])
        scaler.load_state_dict(saved["grad_scaler"])
        if ema is not None:
            if saved.get("ema_state") is None:
                raise ckpt.CheckpointError(f"{path} was trained without EMA; resume it with "
                                           f"ema=off")
            ema.load_checkpoint_entries(saved, str(path))  # every tracked average
        state = RunState(saved["epoch"], saved["step"], list(saved.get("history", [])))
        set_rng_state(saved["rng"])
        log.info("resuming %s from %s (epoch %d, step %d)", run_dir, path.name, state.epoch,
                 state.step)
    elif resume:
        log.info("resume=true but %s has no checkpoint yet: starting from scratch", run_dir)

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "config.yaml", lambda f: f.write(
        OmegaConf.to_yaml(to_plain(cfg)).encode()))
    write_json(run_dir / "run.json", {
        "run": run_dir.name, "model": model.kind, "seed": int(cfg.seed),
        "ema_decay": ema.decay if ema is not None else None,
        "ema_decays": ema.decays if ema is not None else [],
        "ema_sigma_rels": ema.sigma_rels if ema is not None else [],
        "schedule": schedule.describe(),
        "dataset": data.name, "image_size": data.image_size, "num_images": len(data),
        "epochs": epochs, "steps_per_epoch": steps_per_epoch,
        "batch_size": int(cfg.trainer.batch_size), "device": str(device)})
    log.info("%s: %s, %.2fM parameters, %d images (%s), %d steps/epoch, device %s, noise "
             "schedule %s (alpha_bar %.4g .. %.3g)", run_dir, type(model).__name__,
             sum(p.numel() for p in model.parameters()) / 1e6, len(data), data.name,
             steps_per_epoch, device, schedule.name, schedule.alpha_bar[0],
             schedule.alpha_bar[-1])
    if ema is not None:
        describe_ema(ema, steps_per_epoch, epochs)
    if state.epoch >= epochs:
        log.info("%s is already trained to epoch %d of %d: nothing to do", run_dir,
                 state.epoch, epochs)
        return run_dir

    images = data.images.to(device)
    fwd_model = torch.compile(model) if cfg.trainer.compile else model
    loss_fn = loss_fn_for(model)
    autocast = (torch.autocast(device.type, dtype=precision) if precision is not None
                else contextlib.nullcontext())
    model.train()
    last_ckpt = ckpt.list_checkpoints(run_dir)[-1][1] if ckpt.list_checkpoints(run_dir) else None

    for epoch in range(state.epoch + 1, epochs + 1):
        order_gen, noise_gen = epoch_generators(cfg.seed, epoch, device)
        perm = torch.randperm(len(data), generator=order_gen).to(device)
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        bar = _progress(range(steps_per_epoch), epoch, epochs, cfg.trainer.progress)
        for k in bar:
            batch = to_float(images[perm[k * cfg.trainer.batch_size:
                                         (k + 1) * cfg.trainer.batch_size]])
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            parts = train_step(fwd_model, model, loss_fn, schedule, batch, noise_gen, optimizer,
                               scaler, autocast, int(cfg.trainer.grad_accum),
                               cfg.trainer.grad_clip)
            bad = parts.pop("nonfinite")
            if bad:
                raise NonFiniteLossError(
                    f"non-finite {bad} ({parts[bad.replace(' ', '_')]}) at epoch {epoch}, "
                    f"step {state.step + 1} (batch {k + 1}/{steps_per_epoch}); the weights and "
                    f"the EMA were not updated with it. Last good checkpoint: "
                    f"{last_ckpt if last_ckpt else 'none yet'}. Lower optim.lr or use "
                    f"trainer.precision=32, then continue with resume=true.")
            if not parts.pop("skipped"):
                scheduler.step()
                if ema is not None:
                    ema.update()
                    if ema.snapshot_due():
                        atomic_write(snapshot_path(run_dir / SNAPSHOT_DIR, ema.step),
                                     lambda f: torch.save(ema.snapshot(), f))
            state.step += 1
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + value
            if k % 10 == 0 or k == steps_per_epoch - 1:
                bar.set_postfix(loss=f"{sums['loss'] / (k + 1):.4f}", refresh=False)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "step": state.step}
        row.update({name: value / steps_per_epoch for name, value in sums.items()
                    if name != "grad_norm"})
        row.update(lr=optimizer.param_groups[0]["lr"], seconds=round(seconds, 3),
                   images_per_s=round(steps_per_epoch * cfg.trainer.batch_size / seconds, 2))
        if ema is not None:
            row.update(ema.metrics())  # ema_*, ema_*@<decay>, phema_*@<sigma_rel>
        state.epoch = epoch
        state.history.append(row)
        write_metrics(run_dir / "metrics.csv", state.history)
        log.info("epoch %d/%d  step %d  loss %.4f  %.1f img/s%s", epoch, epochs, state.step,
                 row["loss"], row["images_per_s"],
                 f"  EMA share {row['ema_share']:.2f}" if "ema_share" in row else "")
        if epoch % cfg.checkpoint.every == 0 or epoch == epochs:
            last_ckpt = ckpt.save_checkpoint({
                "model_state": model.state_dict(),
                # ema_state/ema_decay: the primary average; emas: every tracked one
                **(ema.checkpoint_entries() if ema is not None
                   else {"ema_state": None, "ema_decay": None}),
                "optimizer": optimizer.state_dict(), "lr_schedule": scheduler.state_dict(),
                "grad_scaler": scaler.state_dict(), "epoch": epoch, "step": state.step,
                "rng": rng_state(), "config": to_plain(cfg), "history": state.history,
                "model_kind": model.kind,
            }, ckpt.checkpoint_path(run_dir, epoch))
    log.info("done: %s", run_dir)
    return run_dir


def train_step(fwd_model, model, loss_fn, schedule, batch, generator, optimizer, scaler,
               autocast, grad_accum: int, grad_clip) -> dict:
    """One optimizer step over `grad_accum` micro-batches; returns floats (one device sync).

    A non-finite loss (or, outside fp16, gradient norm) returns before the optimizer step with
    `nonfinite` naming it, so neither the weights nor the EMA see it. Under fp16 the grad scaler
    skips steps with inf gradients (`skipped`), as it is meant to, and training goes on.
    """
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, torch.Tensor] = {}
    for micro in batch.chunk(grad_accum):
        with autocast:
            out = loss_fn(fwd_model, schedule, micro, generator=generator)
        scaler.scale(out["loss"] / grad_accum).backward()
        for name, value in out.items():
            totals[name] = totals.get(name, 0) + value.detach() / grad_accum
    scaler.unscale_(optimizer)
    max_norm = float(grad_clip) if grad_clip else math.inf
    params, grad_norm, clipped = _grad_norm(model, max_norm)
    values = dict(zip(list(totals) + ["grad_norm"],
                      torch.stack([*totals.values(), grad_norm.float()]).tolist()))
    if not math.isfinite(values["loss"]):
        return {**values, "skipped": True, "nonfinite": "loss"}
    if not scaler.is_enabled() and not math.isfinite(values["grad_norm"]):
        return {**values, "skipped": True, "nonfinite": "gradient norm"}
    if not clipped and not values["grad_norm"] < _CLIP_MARGIN * max_norm:
        # (a non-finite norm under fp16 reaches here too: the scaler skips that step)
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, grad_norm)
    if scaler.is_enabled():
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        values["skipped"] = scaler.get_scale() < scale
    else:
        optimizer.step()
        values["skipped"] = False
    values["nonfinite"] = None
    return values


# gradients are scaled only when the norm is not clearly below max_norm: below it the clip factor
# clamps to exactly 1.0, and multiplying by 1.0 changes nothing, so skipping it is bit-identical
_CLIP_MARGIN = 0.999


def _grad_norm(model, max_norm: float) -> tuple[list, torch.Tensor, bool]:
    """(parameters with gradients, their total L2 gradient norm, whether already clipped).

    `clip_grad_norm_` = `get_total_norm` + `clip_grads_with_norm_`; the second pass, which
    multiplies every gradient by the clip factor (one kernel per tensor on a CPU), is left to
    `train_step` for when it changes something. torch < 2.6 lacks the two halves: clip at once.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if not hasattr(torch.nn.utils, "get_total_norm"):
        return params, torch.nn.utils.clip_grad_norm_(params, max_norm), True
    return params, torch.nn.utils.get_total_norm([p.grad for p in params]), False


def _progress(it, epoch: int, epochs: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(it, desc=f"epoch {epoch}/{epochs}", disable=not enabled, leave=False,
                dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)


register_resolvers()  # ema_tag, used in run folder names


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        train(cfg, run_dir)
    except UserError as e:
        log.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    main()
