"""Cosine noise schedule, noising, and the two training losses of the study (STUDY.md)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .models import downsample


class CosineSchedule:
    """Nichol & Dhariwal cosine schedule with T steps and offset s.

    alpha_bar(t) = cos^2(((t/T) + s)/(1 + s) * pi/2) / alpha_bar(0); betas = 1 - ab[t+1]/ab[t]
    clipped to <= 0.999; the alpha_bar used for noising is the cumulative product of 1 - beta,
    so it is consistent with the clipped betas (it differs from the closed form only at t=T-1).
    """

    def __init__(self, num_steps: int = 1000, s: float = 0.008):
        self.num_steps = num_steps
        t = torch.arange(num_steps + 1, dtype=torch.float64)
        f = torch.cos(((t / num_steps) + s) / (1 + s) * math.pi / 2) ** 2
        ab = f / f[0]
        self.betas = (1 - ab[1:] / ab[:-1]).clamp(max=0.999)
        self.alpha_bar = torch.cumprod(1 - self.betas, dim=0)  # (T,), float64 on the CPU
        self._cache: dict[torch.device, torch.Tensor] = {}

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


def baseline_loss(model: nn.Module, schedule: CosineSchedule, x0: torch.Tensor,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """MSE(eps_pred, eps) with t ~ U{0..T-1}."""
    b = x0.shape[0]
    t = torch.randint(0, schedule.num_steps, (b,), device=x0.device, generator=generator)
    noise = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
    eps = model(schedule.q_sample(x0, t, noise), t)
    loss = F.mse_loss(eps.float(), noise)
    return {"loss": loss}


def lift_loss(model: nn.Module, schedule: CosineSchedule, x0: torch.Tensor,
              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """MSE_64 + MSE_32: independent timesteps and noise per scale; x0_32 = downsample(x0_64)."""
    b = x0.shape[0]
    x0_lo = downsample(x0)
    t_hi = torch.randint(0, schedule.num_steps, (b,), device=x0.device, generator=generator)
    t_lo = torch.randint(0, schedule.num_steps, (b,), device=x0.device, generator=generator)
    n_hi = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
    n_lo = torch.randn(x0_lo.shape, device=x0.device, generator=generator, dtype=x0.dtype)
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
