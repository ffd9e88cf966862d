"""The held-out denoising loss: is the late FID rise overfitting?

The study's hypothesis ("training loss keeps decreasing but FID increases: possible
overfitting") is measured here. Every epoch, for the raw weights and every tracked average, the
study's loss (Baseline: MSE of eps; LIFT: MSE_64 + MSE_32) on a fixed set of (image, t, noise)
triples, once for held-out images and once for as many training images, with the same t values
and the same noise (one seeded generator, restarted for each set), so the curves are smooth and
the two are comparable. metrics.csv gets `loss_train_fixed`, `loss_holdout` and `loss_gap`
(held-out - training) for the raw weights, and `ema_<those>[@<decay>]`, `phema_<those>@<sigma>`
for the averages (the names of the other EMA diagnostics).

Off unless the run has held-out images (data.holdout_root or data.holdout_num). Cost per epoch:
2 x (held-out count) forward passes per weight set, no backward (reference size with AFHQv2's
~1.5k test images: ~3k forwards of 58.5M parameters per weight set, about 4% of an epoch's
246 x 64 forward+backward passes).
"""

from __future__ import annotations

import torch

from explore.nets.data import ImageSet, to_float
from explore.training.step import Training

SEED = 20_241_202  # the triples' generator: the same t and noise in every epoch and for both sets
BATCH = 64


class HeldOutLoss:
    def __init__(self, data: ImageSet, training: Training, seed: int = SEED):
        held = data.holdout
        n = len(held)
        pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
        self.sets = {"train_fixed": data.images[pick.sort().values], "holdout": held}
        self.training, self.seed = training, seed

    @classmethod
    def of(cls, data: ImageSet, training: Training) -> HeldOutLoss | None:
        return cls(data, training) if data.holdout is not None and len(data.holdout) else None

    @torch.no_grad()
    def loss(self, images_uint8: torch.Tensor) -> float:
        """The study's loss of the model's current weights on the fixed triples of a set."""
        t = self.training
        gen = torch.Generator(device=t.device).manual_seed(self.seed)
        total, count = 0.0, 0
        for start in range(0, len(images_uint8), BATCH):
            x = to_float(images_uint8[start:start + BATCH].to(t.device))
            if t.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with t.autocast():
                out = t.loss_fn(t.model, t.schedule, x, generator=gen)
            total += float(out["loss"]) * len(x)
            count += len(x)
        return total / count

    def _row(self, prefix: str, suffix: str) -> dict[str, float]:
        train, held = (self.loss(self.sets[k]) for k in ("train_fixed", "holdout"))
        return {f"{prefix}loss_train_fixed{suffix}": train, f"{prefix}loss_holdout{suffix}": held,
                f"{prefix}loss_gap{suffix}": held - train}

    def metrics(self) -> dict[str, float]:
        """The columns of one epoch: raw weights, then every tracked average."""
        t = self.training
        was_training = t.model.training
        t.model.eval()
        try:
            row = self._row("", "")
            ema = t.ema
            for track in (ema.tracks if ema is not None else []):
                primary = track is ema.primary and track.kind == "ema"
                # ema_<col>@<decay>, phema_<col>@<sigma_rel>, bema_<col> (one BEMA: no suffix)
                suffix = "" if primary or "@" not in track.name else \
                    "@" + track.name.split("@")[1]
                with track.average_parameters():
                    row.update(self._row(f"{track.kind}_", suffix))
        finally:
            t.model.train(was_training)
        return row
