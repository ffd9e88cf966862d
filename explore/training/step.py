"""What trains: the model, its optimizer and LR schedule, the grad scaler, the EMA, autocast and
the loss, built by one function from the config and saved and restored as one state.

    training = build_training(settings, device, total_steps)
    out = train_step(training, batch, generator)     # one optimizer step (+ EMA update)
    torch.save(training.state_dict())                # everything a bitwise resume needs
    training.load_state_dict(saved, source=path)

`explore.training.loop` is the recipe around it (epochs, checkpoints, metrics); the benchmark
(`bench/`) times `train_step` on the same object.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, field

import torch
from torch import nn

from explore.core.config import build
from explore.core.devices import use_channels_last
from explore.core.errors import UserError
from explore.nets.diffusion import CosineSchedule, loss_fn_for
from explore.run.checkpoint import CheckpointError
from explore.training.distributed import Ranks
from explore.training.settings import TrainSettings

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(UserError):
    """Training produced a NaN/inf loss; nothing from that step reached the weights or EMA."""


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


@dataclass
class Training:
    """Everything that trains, and the settings of one optimizer step."""

    model: nn.Module              # the model (EMA, checkpoints and evaluation use this one)
    forward: nn.Module            # what the step calls: the model or its torch.compile wrapper
    optimizer: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: object | None            # explore.ema.EMA / EMABank / PostHocEMA, or None
    schedule: CosineSchedule      # the noise schedule
    loss_fn: object               # baseline_loss or lift_loss
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    grad_accum: int = 1
    grad_clip: float | None = 1.0
    ranks: Ranks = field(default_factory=Ranks)  # data-parallel ranks (one: not distributed)
    ddp: nn.Module | None = None  # the DistributedDataParallel wrapper, with several ranks

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @property
    def kind(self) -> str:
        return self.model.kind

    def weights_state(self) -> dict:
        """What evaluation reads: `model_state` and the averages (`ema_state`, `ema_decay`,
        `emas`; the original study's layout for the first two)."""
        out = {"model_state": self.model.state_dict()}
        out.update(self.ema.checkpoint_entries() if self.ema is not None
                   else {"ema_state": None, "ema_decay": None})
        return out

    def state_dict(self) -> dict:
        """The weights plus optimizer, LR schedule and grad scaler: a bitwise resume."""
        return {**self.weights_state(), "optimizer": self.optimizer.state_dict(),
                "lr_schedule": self.lr_schedule.state_dict(),
                "grad_scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict, source: str = "the checkpoint") -> None:
        """Everything `state_dict()` saved; a snapshot (no optimizer) restores the weights and
        averages, puts the LR schedule at its step, and leaves the optimizer fresh."""
        self.model.load_state_dict(state["model_state"])
        if self.ema is not None:
            if state.get("ema_state") is None:
                raise CheckpointError(f"{source} was trained without EMA; resume it with ema=off")
            self.ema.load_checkpoint_entries(state, str(source))  # every tracked average
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
            self.lr_schedule.load_state_dict(state["lr_schedule"])
            self.scaler.load_state_dict(state["grad_scaler"])
        else:
            self.lr_schedule.last_epoch = int(state["step"])
            self.set_lr(self.lr_schedule.base_lrs[0])

    def set_lr(self, lr: float) -> None:
        """A new base learning rate from the current step on (resuming with optim.lr=...)."""
        sched = self.lr_schedule
        sched.base_lrs = [float(lr)] * len(sched.base_lrs)
        for group, factor in zip(self.optimizer.param_groups, sched.lr_lambdas):
            group["initial_lr"] = float(lr)
            group["lr"] = float(lr) * factor(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]


def build_training(settings: TrainSettings, device: torch.device, total_steps: int,
                   ranks: Ranks | None = None) -> Training:
    """The Training of a run's settings (model, diffusion, ema, optim and trainer); with
    several `ranks`, the forward pass is DistributedDataParallel's."""
    t, optim = settings.trainer, settings.optim
    ranks = ranks or Ranks()
    model = build(settings.model).to(device)
    channels_last = use_channels_last(t.channels_last, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ddp = None
    if ranks.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                      else None)
    optimizer = build(optim.optimizer)(params=model.parameters())
    precision = PRECISIONS[str(t.precision)]
    ema = build(settings.ema, model=model) if settings.ema_enabled else None
    if ema is not None:
        ema.plan(total_steps)  # a post-hoc EMA spaces its snapshots over the planned run
    forward = ddp if ddp is not None else model
    return Training(
        model=model,
        forward=torch.compile(forward) if t.compile else forward,
        optimizer=optimizer,
        lr_schedule=build_lr_schedule(optimizer, optim.lr_schedule, total_steps,
                                      int(optim.warmup_steps)),
        scaler=torch.amp.GradScaler(device.type, enabled=precision is torch.float16),
        ema=ema, schedule=build(settings.diffusion), loss_fn=loss_fn_for(model), device=device,
        autocast_dtype=precision, channels_last=channels_last, grad_accum=int(t.grad_accum),
        grad_clip=float(t.grad_clip) if t.grad_clip else None, ranks=ranks, ddp=ddp)


def train_step(training: Training, batch: torch.Tensor, generator: torch.Generator) -> dict:
    """One optimizer step over `grad_accum` micro-batches, then the LR schedule and the EMA;
    returns the losses and gradient norm as floats (one device sync).

    `batch` is the global batch: with several ranks each takes its slice of every micro-batch;
    every slice draws its samples' timesteps and noise as one process with one micro-batch
    would (explore.training.distributed); the gradients are averaged over the ranks by DDP as
    the last micro-batch's backward pass ends, the losses once per step. So N ranks compute what
    one process with `grad_accum=N` computes, slice for slice: the gradient is (g_0 + ... +
    g_N-1) / N either way, summed by the all-reduce or by backward's accumulation (the same sum
    for N = 2; for more ranks the all-reduce may add in another order).

    A non-finite loss (or, outside fp16, gradient norm) returns before the optimizer step with
    `nonfinite` naming it, so neither the weights nor the EMA see it. Under fp16 the grad scaler
    skips steps with inf gradients (`skipped`), as it is meant to, and training goes on.
    """
    t = training
    if t.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    t.optimizer.zero_grad(set_to_none=True)
    totals: dict[str, torch.Tensor] = {}
    micros = batch.chunk(t.grad_accum)
    # every micro-batch (on every rank) draws for the whole batch from the step's first state and
    # keeps its samples' part: rank r of N and micro-batch r of N then see the same numbers
    first_draw = generator.get_state() if len(micros) > 1 else None
    for k, micro in enumerate(micros):
        if first_draw is not None:
            generator.set_state(first_draw)
        mine, part = t.ranks.slice(micro, start=k * len(micro), total=len(batch))
        # with several ranks, gradients are all-reduced once, after the last micro-batch
        sync = t.ddp.no_sync() if t.ddp is not None and k < len(micros) - 1 else \
            contextlib.nullcontext()
        with sync:
            with t.autocast():
                out = t.loss_fn(t.forward, t.schedule, mine, generator=generator, part=part)
            t.scaler.scale(out["loss"] / t.grad_accum).backward()
        for name, value in out.items():
            totals[name] = totals.get(name, 0) + value.detach() / t.grad_accum
    t.scaler.unscale_(t.optimizer)
    max_norm = t.grad_clip if t.grad_clip else math.inf
    params, grad_norm, clipped = _grad_norm(t.model, max_norm)
    losses = t.ranks.mean(torch.stack(list(totals.values())).float())  # over the whole batch
    values = dict(zip(list(totals) + ["grad_norm"],
                      torch.cat([losses, grad_norm.float().reshape(1)]).tolist()))
    if not math.isfinite(values["loss"]):
        return {**values, "skipped": True, "nonfinite": "loss"}
    if not t.scaler.is_enabled() and not math.isfinite(values["grad_norm"]):
        return {**values, "skipped": True, "nonfinite": "gradient norm"}
    if not clipped and not values["grad_norm"] < _CLIP_MARGIN * max_norm:
        # (a non-finite norm under fp16 reaches here too: the scaler skips that step)
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, grad_norm)
    if t.scaler.is_enabled():
        scale = t.scaler.get_scale()
        t.scaler.step(t.optimizer)
        t.scaler.update()
        values["skipped"] = t.scaler.get_scale() < scale
    else:
        t.optimizer.step()
        values["skipped"] = False
    if not values["skipped"]:
        t.lr_schedule.step()
        if t.ema is not None:
            t.ema.update()
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


# -- randomness -------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)


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
