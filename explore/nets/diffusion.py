"""Noise schedules, noising, and the two training losses of the study (STUDY.md).

Two cosine schedules (Nichol & Dhariwal, offset s = 0.008, T = 1000), told apart by their beta
clip range:

- ``study`` (the default): betas clipped to [1e-4, 0.02], as the original study's
  `DDIMScheduler(num_train_timesteps=1000, beta_schedule="cosine")` did (its constructor passes
  the linear schedule's defaults into the cosine beta function as the clip range), computed in
  float32 like the original: alpha_bar(0) = 0.9999, alpha_bar(990) = 3.83e-3, alpha_bar(999) =
  3.19e-3 (log-SNR 9.21, -5.56, -5.74).
- ``cosine``: the textbook schedule, betas clipped at 0.999 only, computed in float64:
  alpha_bar(999) = 2.43e-9 (log-SNR -19.8). What this harness used before the clip was found;
  runs whose stored config names no schedule were trained with it.

`conf/diffusion/{study,cosine}.yaml` select them by name; any other clip range is
`diffusion.beta_min=... diffusion.beta_max=...` and is named ``cosine-clip<beta_min>-<beta_max>``.
One schedule serves a whole run: training, noising, sampling, the heatmap's gamma(SNR) and the
DP's log-SNR grid all read it from the run's config (`schedule_of`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from explore.core.config import build
from explore.core.errors import ConfigError
from explore.nets.models import downsample

# name -> constructor arguments; `CosineSchedule.name` maps arguments back to these names
PRESETS: dict[str, dict] = {
    "study": {"beta_min": 1e-4, "beta_max": 0.02, "precision": "float32"},
    "cosine": {"beta_min": 0.0, "beta_max": 0.999, "precision": "float64"},
}
PRECISIONS = ("float32", "float64")


class CosineSchedule:
    """Cosine schedule with T steps, offset s and betas clipped to [beta_min, beta_max].

    alpha_bar_c(t) = cos^2(((t/T) + s)/(1 + s) * pi/2); beta_t = clip(1 - alpha_bar_c(t+1) /
    alpha_bar_c(t), beta_min, beta_max); the alpha_bar used for noising and sampling is
    cumprod(1 - beta) (with clipping it departs from the closed form: at t = 999 the study's
    keeps 3.19e-3 where the closed form reaches 0).

    precision: float32 computes betas and their cumulative product in float32 as the original
    study's scheduler did (python-float betas, a float32 tensor, torch.cumprod); float64 is this
    harness's earlier computation (the unclipped ``cosine`` preset keeps it bit for bit).
    `alpha_bar` is held as float64 either way (float32 values are exact in float64).
    """

    def __init__(self, num_steps: int = 1000, s: float = 0.008, beta_min: float = 1e-4,
                 beta_max: float = 0.02, precision: str = "float32", name: str | None = None):
        if int(num_steps) < 2:
            raise ConfigError(f"diffusion.num_steps={num_steps} must be >= 2")
        if not 0.0 <= float(beta_min) < float(beta_max) < 1.0:
            raise ConfigError(f"diffusion.beta_min={beta_min}, beta_max={beta_max}: need "
                              f"0 <= beta_min < beta_max < 1")
        if precision not in PRECISIONS:
            raise ConfigError(f"diffusion.precision={precision!r}: use one of {PRECISIONS}")
        self.num_steps, self.s = int(num_steps), float(s)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.precision = precision
        if precision == "float32":
            self.betas = _study_betas(self.num_steps, self.s, self.beta_min, self.beta_max)
            self.alpha_bar = torch.cumprod(1 - self.betas, dim=0).double()
        else:
            t = torch.arange(self.num_steps + 1, dtype=torch.float64)
            f = torch.cos(((t / self.num_steps) + self.s) / (1 + self.s) * math.pi / 2) ** 2
            ab = f / f[0]
            self.betas = (1 - ab[1:] / ab[:-1]).clamp(min=self.beta_min, max=self.beta_max)
            self.alpha_bar = torch.cumprod(1 - self.betas, dim=0)  # (T,), float64 on the CPU
        self._cache: dict[torch.device, torch.Tensor] = {}
        if name is not None and name != self.name:
            raise ConfigError(f"diffusion.name={name!r} does not match its settings, which "
                              f"are the {self.name!r} schedule; use diffusion={name} or drop "
                              f"the name")

    @classmethod
    def named(cls, name: str) -> CosineSchedule:
        """The preset `name` (study | cosine)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown noise schedule {name!r}: use one of {list(PRESETS)}")
        return cls(**PRESETS[name])

    @property
    def name(self) -> str:
        """study, cosine, or cosine-clip<beta_min>-<beta_max> (filename-safe: heatmap caches)."""
        if self.num_steps == 1000 and self.s == 0.008:
            for name, preset in PRESETS.items():
                if (self.beta_min, self.beta_max, self.precision) == (
                        preset["beta_min"], preset["beta_max"], preset["precision"]):
                    return name
        extra = ("" if (self.num_steps, self.s) == (1000, 0.008)
                 else f"-T{self.num_steps}-s{self.s:g}")
        return f"cosine-clip{self.beta_min:g}-{self.beta_max:g}{extra}"

    def describe(self) -> dict:
        """What a run folder records about its schedule (run.json)."""
        return {"name": self.name, "num_steps": self.num_steps, "s": self.s,
                "beta_min": self.beta_min, "beta_max": self.beta_max,
                "precision": self.precision,
                "alpha_bar_first": float(self.alpha_bar[0]),
                "alpha_bar_last": float(self.alpha_bar[-1])}

    def alpha_bar_on(self, device: torch.device | str) -> torch.Tensor:
        """alpha_bar as float32 on `device` (cached, so the training step does no transfer)."""
        device = torch.device(device)
        if device not in self._cache:
            self._cache[device] = self.alpha_bar.to(device=device, dtype=torch.float32)
        return self._cache[device]

    def snr(self, t: torch.Tensor | int) -> torch.Tensor:
        ab = self.alpha_bar[torch.as_tensor(t, dtype=torch.long)]
        return ab / (1 - ab)

    def log_snr(self, t: torch.Tensor | int) -> torch.Tensor:
        return torch.log(self.snr(t))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps."""
        ab = self.alpha_bar_on(x0.device)[t].view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def _study_betas(num_steps: int, s: float, beta_min: float, beta_max: float) -> torch.Tensor:
    """The original's betas: python-float cosine ratios, clipped, as one float32 tensor."""
    def f(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(max(1 - f((i + 1) / num_steps) / f(i / num_steps), beta_min), beta_max)
             for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float32)


def schedule_of(run_config: dict | None, log=None) -> CosineSchedule:
    """The schedule a run was trained with, from the config stored in its checkpoints.

    A config with a `diffusion` entry: that schedule. A config without one was written before
    the schedule was recorded, when this harness trained with the unclipped cosine: that one
    (and `log`, if given, says so). No config at all (a checkpoint of the original study): the
    study's schedule, which the original trained with.
    """
    if run_config is None:
        return CosineSchedule.named("study")
    node = run_config.get("diffusion")
    if node:
        return build(node)
    if log is not None:
        log("the run's stored config names no noise schedule: it was trained before the "
            "schedule was recorded, with the unclipped cosine, so it is evaluated with that "
            "one (diffusion=cosine)")
    return CosineSchedule.named("cosine")


def _draw(make, shape: tuple[int, ...], part: tuple[int, int] | None) -> torch.Tensor:
    """`make(shape)` for these samples; with `part` = (start, total), drawn for all `total`
    samples of the micro-batch and sliced [start, start + len): a rank of a data-parallel run
    draws exactly what a one-process run draws for its samples (explore.training.distributed)."""
    if part is None:
        return make(shape)
    start, total = part
    return make((total, *shape[1:]))[start:start + shape[0]]


def baseline_loss(model: nn.Module, schedule: CosineSchedule, x0: torch.Tensor,
                  generator: torch.Generator | None = None,
                  part: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """MSE(eps_pred, eps) with t ~ U{0..T-1}. `part`: see `_draw`."""
    b = x0.shape[0]
    t = _draw(lambda shape: torch.randint(0, schedule.num_steps, shape, device=x0.device,
                                          generator=generator), (b,), part)
    noise = _draw(lambda shape: torch.randn(shape, device=x0.device, generator=generator,
                                            dtype=x0.dtype), tuple(x0.shape), part)
    eps = model(schedule.q_sample(x0, t, noise), t)
    loss = F.mse_loss(eps.float(), noise)
    return {"loss": loss}


def lift_loss(model: nn.Module, schedule: CosineSchedule, x0: torch.Tensor,
              generator: torch.Generator | None = None,
              part: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """MSE_64 + MSE_32: independent timesteps and noise per scale; x0_32 = downsample(x0_64).
    `part`: see `_draw`."""
    b = x0.shape[0]
    x0_lo = downsample(x0)

    def steps(shape):
        return torch.randint(0, schedule.num_steps, shape, device=x0.device, generator=generator)

    def noise(shape):
        return torch.randn(shape, device=x0.device, generator=generator, dtype=x0.dtype)

    t_hi, t_lo = _draw(steps, (b,), part), _draw(steps, (b,), part)
    n_hi, n_lo = _draw(noise, tuple(x0.shape), part), _draw(noise, tuple(x0_lo.shape), part)
    eps_hi, eps_lo = model(schedule.q_sample(x0, t_hi, n_hi), schedule.q_sample(x0_lo, t_lo, n_lo),
                           t_hi, t_lo)
    loss_64 = F.mse_loss(eps_hi.float(), n_hi)
    loss_32 = F.mse_loss(eps_lo.float(), n_lo)
    return {"loss": loss_64 + loss_32, "loss_64": loss_64, "loss_32": loss_32}


def loss_fn_for(model: nn.Module):
    """The study's loss for a model: baseline_loss or lift_loss, by the model's `kind`."""
    kind = getattr(model, "kind", None)
    if kind == "baseline":
        return baseline_loss
    if kind == "lift":
        return lift_loss
    raise ValueError(f"no loss for a model of kind {kind!r}: expected 'baseline' or 'lift'")
