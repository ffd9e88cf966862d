"""The harness side of the training benchmarks: one optimizer step as a training run makes it,
on the run's own `explore.training.Training` (built by the same `build_training` from the same
config), so an option measured here is the option a training run gets."""

from __future__ import annotations

import torch


class HarnessTrainer:
    """`train_step` of a `Training` built from the training config, on a fixed batch."""

    def __init__(self, cfg, device: torch.device, batch: torch.Tensor):
        from explore.core.config import to_plain
        from explore.training.settings import TrainSettings
        from explore.training.step import build_training, epoch_generators

        torch.manual_seed(int(cfg.seed))
        self.cfg = cfg
        # an LR horizon far away: the constant schedule's factor, whatever the bench's step count
        self.training = build_training(TrainSettings.from_config(to_plain(cfg)), device,
                                       total_steps=10**9)
        self.model, self.ema, self.batch = self.training.model, self.training.ema, batch
        self.generator = epoch_generators(int(cfg.seed), 1, device)[1]
        self.model.train()

    def step(self) -> None:
        from explore.training.step import train_step

        parts = train_step(self.training, self.batch, self.generator)
        if parts["nonfinite"]:
            raise RuntimeError(f"bench: non-finite {parts['nonfinite']} in a training step")
