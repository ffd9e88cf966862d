"""The harness side of the training benchmarks: one optimizer step as a training run makes it.

TODO(training-object): `HarnessTrainer` re-implements the set-up of `explore.train.train`. Once
explore/train.py has its `Training` object, build that here instead and delete this copy; the
bench uses only `HarnessTrainer(cfg, device, batch)` and its `.step()`, so the cases that use it
(bench/cases_train.py, bench/cases_ema.py) need not change.
"""

from __future__ import annotations

import contextlib

import torch


# TODO(training-object): replace with explore.train's Training object (see the module docstring).
class HarnessTrainer:
    """One optimizer step as explore.train.train runs it, built from the training config.

    Mirrors `train()`'s set-up (model, channels_last, optimizer from optim.optimizer, LR schedule,
    precision/autocast, grad scaler, EMA from the ema group, torch.compile) and its per-step body
    (`train_step`, scheduler step, `ema.update()`), so an option measured here is the option a
    training run gets.
    """

    def __init__(self, cfg, device: torch.device, batch: torch.Tensor):
        from hydra.utils import instantiate

        from explore.diffusion import CosineSchedule, loss_fn_for
        from explore.train import PRECISIONS, build_lr_schedule, ema_enabled, epoch_generators

        torch.manual_seed(int(cfg.seed))
        self.cfg = cfg
        from explore.devices import use_channels_last

        model = instantiate(cfg.model).to(device)
        if use_channels_last(cfg.trainer.channels_last, device):
            model = model.to(memory_format=torch.channels_last)
            batch = batch.contiguous(memory_format=torch.channels_last)
        self.model, self.batch = model, batch
        self.optimizer = instantiate(cfg.optim.optimizer)(params=model.parameters())
        self.scheduler = build_lr_schedule(self.optimizer, cfg.optim.lr_schedule, 10**9,
                                           int(cfg.optim.warmup_steps))
        precision = PRECISIONS[str(cfg.trainer.precision)]
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision is torch.float16)
        self.ema = instantiate(cfg.ema, model=model) if ema_enabled(cfg) else None
        self.fwd_model = torch.compile(model) if cfg.trainer.compile else model
        self.loss_fn = loss_fn_for(model)
        self.schedule = CosineSchedule()
        self.autocast = (torch.autocast(device.type, dtype=precision) if precision is not None
                         else contextlib.nullcontext())
        self.generator = epoch_generators(int(cfg.seed), 1, device)[1]
        model.train()

    def step(self) -> None:
        from explore.train import train_step

        t = self.cfg.trainer
        parts = train_step(self.fwd_model, self.model, self.loss_fn, self.schedule, self.batch,
                           self.generator, self.optimizer, self.scaler, self.autocast,
                           int(t.grad_accum), t.grad_clip)
        if parts["nonfinite"]:
            raise RuntimeError(f"bench: non-finite {parts['nonfinite']} in a training step")
        if not parts["skipped"]:
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update()
