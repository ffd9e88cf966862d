"""The harness's own training step, for every benchmark that times one: one optimizer step as a
training run makes it (`explore.training.step.train_step`), on the run's own
`explore.training.Training`, built by the same `build_training` from the same config, so an
option measured here is the option a training run gets.

    cfg = train_config("lift", ModelSize(), device, batch=4, extra=["trainer.precision=bf16"])
    trainer = HarnessTrainer(cfg, device, random_batch(4, 64, device))
    trainer.step()
"""

from __future__ import annotations

import torch

from explore.core.config import compose, to_plain
from explore.training.settings import TrainSettings
from explore.training.step import build_training, epoch_generators, train_step

from .sizes import ModelSize

EMA_DECAY = 0.9999  # the study's decay


def train_config(kind: str, size: ModelSize, device: torch.device, batch: int,
                 extra: list[str] = (), ema: bool = True):
    """The training config (conf/train.yaml) of a benchmark: its defaults plus the model, its
    size, the batch and `extra` overrides; an EMA of EMA_DECAY unless `ema` is false."""
    averages = ["ema=on", f"ema.decay={EMA_DECAY}"] if ema else ["ema=off"]
    return compose("train", [f"model={kind}", *averages, f"device={device}",
                             f"trainer.batch_size={batch}", "trainer.progress=false",
                             *size.overrides(), *extra])


def random_batch(batch: int, image_size: int, device: torch.device) -> torch.Tensor:
    """A fixed batch of images in [-1, 1] (seed 0), made on the CPU and moved to `device`."""
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(batch, 3, image_size, image_size, generator=gen) * 2 - 1).to(device)


class HarnessTrainer:
    """`train_step` of a `Training` built from the training config, on a fixed batch."""

    def __init__(self, cfg, device: torch.device, batch: torch.Tensor):
        torch.manual_seed(int(cfg.seed))
        self.cfg = cfg
        # an LR horizon far away: the constant schedule's factor, whatever the bench's step count
        self.training = build_training(TrainSettings.from_config(to_plain(cfg)), device,
                                       total_steps=10**9)
        self.model, self.ema, self.batch = self.training.model, self.training.ema, batch
        self.generator = epoch_generators(int(cfg.seed), 1, device)[1]
        self.model.train()

    def step(self) -> None:
        parts = train_step(self.training, self.batch, self.generator)
        if parts["nonfinite"]:
            raise RuntimeError(f"bench: non-finite {parts['nonfinite']} in a training step")
