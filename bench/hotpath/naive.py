"""Naive reference implementations, written the way the original study wrote them.

Each function here computes the same result as a faster function in `explore`, with
plain Python loops and no batching. They exist as references for correctness tests and as the
"before" side of the benchmark. Each section is self-contained; add new sections at the end.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from explore.lift.dp_path import check_step_count, grid_timesteps, prepare_inputs
from explore.lift.heatmap import (
    Heatmap,
    cell_draws,
    gamma_snr,
    hutchinson_v,
    inference_context,
    model_device_dtype,
)
from explore.nets.diffusion import CosineSchedule, loss_fn_for
from explore.nets.models import downsample

# ---------------------------------------------------------------------------------------------
# DP path: reference for explore.lift.dp_path.optimal_path
# ---------------------------------------------------------------------------------------------


def naive_optimal_path(error_64, error_32, log_snr, num_steps: int = 18, max_jump: int = 5
                       ) -> tuple[list[tuple[int, int]], float]:
    """Same contract and result as `explore.lift.dp_path.optimal_path`, with nested Python loops.

    Loops: layers k, target cells (i2, j2), predecessors (i, j) in ascending lexicographic order,
    keeping the first strict minimum of (dp + c64) + c32: the same tie-break and float order as
    the vectorised version, so the paths are identical.
    """
    e64, e32, lam = prepare_inputs(error_64, error_32, log_snr)
    n = len(lam)
    if max_jump < 1:
        raise ValueError(f"max_jump must be >= 1, got {max_jump}")
    check_step_count(n, num_steps)
    if n == 1:
        return [(0, 0)], 0.0
    inf = float("inf")
    dp = np.full((num_steps + 1, n, n), inf)
    parent = np.full((num_steps + 1, n, n, 2), -1, dtype=int)
    dp[0, 0, 0] = 0.0
    for k in range(1, num_steps + 1):
        for i2 in range(n):
            for j2 in range(n):
                best, best_ij = inf, (-1, -1)
                for i in range(max(0, i2 - max_jump), i2 + 1):
                    for j in range(max(0, j2 - max_jump), j2 + 1):
                        if (i, j) == (i2, j2) or dp[k - 1, i, j] == inf:
                            continue
                        c64 = (e64[i, j] + e64[i2, j2]) / 2 * abs(lam[i2] - lam[i])
                        c32 = (e32[i, j] + e32[i2, j2]) / 2 * abs(lam[j2] - lam[j])
                        cost = dp[k - 1, i, j] + c64 + c32
                        if cost < best:
                            best, best_ij = cost, (i, j)
                dp[k, i2, j2] = best
                parent[k, i2, j2] = best_ij
    if dp[num_steps, n - 1, n - 1] == inf:
        # the study's retry: a larger jump (check_step_count guarantees this ends)
        return naive_optimal_path(e64, e32, lam, num_steps, max_jump + 2)
    path = [(n - 1, n - 1)]
    i, j = n - 1, n - 1
    for k in range(num_steps, 0, -1):
        i, j = (int(v) for v in parent[k, i, j])
        path.append((i, j))
    return path[::-1], float(dp[num_steps, n - 1, n - 1])


# ---------------------------------------------------------------------------------------------
# Error heatmap: reference for explore.lift.heatmap.error_heatmap
# ---------------------------------------------------------------------------------------------


def naive_error_heatmap(model: nn.Module, schedule: CosineSchedule, images: torch.Tensor, *,
                        grid_size: int = 30, num_probes: int = 4, seed: int = 0,
                        progress: bool = False) -> Heatmap:
    """Same contract and numbers as `explore.lift.heatmap.error_heatmap` (up to float rounding).

    One grid cell, one scale and one probe per `torch.func.jvp` call, in Python loops; the same
    per-cell random draws (`cell_draws`), so the estimates match the batched version.
    """
    device, dtype = model_device_dtype(model)
    x_hi = images.to(device=device, dtype=dtype)
    x_lo = downsample(x_hi)
    b = x_hi.shape[0]
    ts = grid_timesteps(grid_size, schedule.num_steps)
    gamma = gamma_snr(schedule, ts)
    v_hi, v_lo = hutchinson_v(x_hi), hutchinson_v(x_lo)
    e64 = np.zeros((grid_size, grid_size))
    e32 = np.zeros((grid_size, grid_size))
    with tqdm(total=grid_size * grid_size, desc="heatmap (naive)", unit="cell",
              disable=not progress) as bar, inference_context(model):
        for i in range(grid_size):
            for j in range(grid_size):
                d = cell_draws(seed, i, j, b, x_hi.shape[1:], x_lo.shape[1:], num_probes)
                t_hi = torch.full((b,), int(ts[i]), device=device, dtype=torch.long)
                t_lo = torch.full((b,), int(ts[j]), device=device, dtype=torch.long)
                z_hi = schedule.q_sample(x_hi, t_hi, d.noise_hi.to(device, dtype))
                z_lo = schedule.q_sample(x_lo, t_lo, d.noise_lo.to(device, dtype))

                def f_hi(z, z_lo=z_lo, t_hi=t_hi, t_lo=t_lo):
                    return model(z, z_lo, t_hi, t_lo)[0]

                def f_lo(z, z_hi=z_hi, t_hi=t_hi, t_lo=t_lo):
                    return model(z_hi, z, t_hi, t_lo)[1]

                sq_hi = torch.zeros_like(z_hi)
                sq_lo = torch.zeros_like(z_lo)
                for k in range(num_probes):
                    u_hi = d.probes_hi[k].to(device, dtype) * math.sqrt(v_hi)
                    u_lo = d.probes_lo[k].to(device, dtype) * math.sqrt(v_lo)
                    sq_hi += torch.func.jvp(f_hi, (z_hi,), (u_hi,))[1] ** 2
                    sq_lo += torch.func.jvp(f_lo, (z_lo,), (u_lo,))[1] ** 2
                est_hi = (sq_hi / num_probes * v_hi).sum(dim=(1, 2, 3)).mean()
                est_lo = (sq_lo / num_probes * v_lo).sum(dim=(1, 2, 3)).mean()
                e64[i, j] = float(est_hi) * gamma[i]
                e32[i, j] = float(est_lo) * gamma[j]
                bar.update(1)
    return Heatmap(timesteps=ts, log_snr=schedule.log_snr(torch.as_tensor(ts)).numpy(),
                   error_64=e64, error_32=e32, grid_size=grid_size, num_probes=num_probes,
                   seed=seed, num_images=b)


# ---------------------------------------------------------------------------------------------
# EMA: reference for explore.ema.EMA.update
# ---------------------------------------------------------------------------------------------


class NaiveEMA:
    """The original study's EMA: name -> shadow, and per update, for every named parameter,

        shadow[name] = decay * shadow[name] + (1 - decay) * param.data

    which allocates three new tensors per parameter per step (two products and their sum).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        self.model, self.decay = model, decay
        self.shadow = {name: p.data.clone() for name, p in model.named_parameters()
                       if p.requires_grad}

    def update(self) -> None:
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                self.shadow[name] = self.decay * self.shadow[name] + (1 - self.decay) * param.data


# ---------------------------------------------------------------------------------------------
# Training step: reference for explore.train.train_step (+ scheduler and EMA)
# ---------------------------------------------------------------------------------------------


def naive_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: CosineSchedule,
                     batch: torch.Tensor, ema: NaiveEMA | None = None, grad_clip: float = 1.0
                     ) -> float:
    """One step of the original's `train_one_epoch` body, in plain fp32.

    zero_grad, the study's loss (Baseline or LIFT, global RNG), backward, gradient-norm clip,
    AdamW step, EMA update, and the loss as a Python float (the original logged it every step).
    """
    optimizer.zero_grad()
    loss = loss_fn_for(model)(model, schedule, batch)["loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if ema is not None:
        ema.update()
    return loss.item()


# ---------------------------------------------------------------------------------------------
# DDIM sampling: reference for explore.nets.sampling.sample_baseline / sample_lift
# ---------------------------------------------------------------------------------------------


def _naive_ddim_update(x, eps, alpha_bar, t, t_next):
    """The original scheduler's step: x0 from eps, clip, eps again from the clipped x0."""
    a = alpha_bar[t]
    a_next = alpha_bar[t_next] if t_next is not None else torch.tensor(1.0)
    x0 = (x - torch.sqrt(1 - a) * eps) / torch.sqrt(a)
    x0 = torch.clamp(x0, -1.0, 1.0)
    eps = (x - torch.sqrt(a) * x0) / torch.sqrt(1 - a)
    return torch.sqrt(a_next) * x0 + torch.sqrt(1 - a_next) * eps


def _last(t: int, final_step: str) -> int | None:
    """Where the last call steps to: the same timestep (study) or alpha_bar 1 (None)."""
    return t if final_step == "study" else None


@torch.no_grad()
def naive_sample_baseline(model: nn.Module, schedule: CosineSchedule, num_images: int,
                          num_steps: int = 18, seed: int = 0, device="cpu",
                          noise: torch.Tensor | None = None,
                          final_step: str = "study") -> torch.Tensor:
    """Float images in [0, 1] from the Baseline with 18-step DDIM (eta 0), one batch, per-step loop.

    `noise`: the starting x_T (default: torch.randn under torch.manual_seed(seed)). Every call of
    the list is made, the last one stepping 0 -> 0 (study, as the original) or to alpha_bar 1.
    """
    s, c = model.image_size, model.channels
    if noise is None:
        torch.manual_seed(seed)
        noise = torch.randn(num_images, c, s, s)
    x = noise.to(device)
    alpha_bar = schedule.alpha_bar.float().to(device)
    timesteps = list(range(0, schedule.num_steps, schedule.num_steps // num_steps))[::-1]
    for k, t in enumerate(timesteps):
        t_next = timesteps[k + 1] if k + 1 < len(timesteps) else _last(t, final_step)
        eps = model(x, torch.full((x.shape[0],), t, device=device, dtype=torch.long))
        x = _naive_ddim_update(x, eps, alpha_bar, t, t_next)
    return ((x + 1) / 2).clamp(0, 1).cpu()


@torch.no_grad()
def naive_sample_lift(model: nn.Module, schedule: CosineSchedule, num_images: int,
                      path: list[tuple[int, int]], seed: int = 0, device="cpu",
                      noise: tuple[torch.Tensor, torch.Tensor] | None = None,
                      final_step: str = "study") -> torch.Tensor:
    """Float 64x64 images in [0, 1] from LIFT along `path` = [(t_64, t_32), ...], per-step loop.

    `noise`: the starting (x_64, x_32) (default: torch.randn under torch.manual_seed(seed)).
    """
    s, c = model.image_size, model.channels
    if noise is None:
        torch.manual_seed(seed)
        noise = (torch.randn(num_images, c, s, s), torch.randn(num_images, c, s // 2, s // 2))
    x_hi, x_lo = noise[0].to(device), noise[1].to(device)
    alpha_bar = schedule.alpha_bar.float().to(device)
    n = x_hi.shape[0]
    for k, (t_hi, t_lo) in enumerate(path):
        nxt = path[k + 1] if k + 1 < len(path) else (_last(t_hi, final_step),
                                                      _last(t_lo, final_step))
        eps_hi, eps_lo = model(x_hi, x_lo,
                               torch.full((n,), t_hi, device=device, dtype=torch.long),
                               torch.full((n,), t_lo, device=device, dtype=torch.long))
        x_hi = _naive_ddim_update(x_hi, eps_hi, alpha_bar, t_hi, nxt[0])
        x_lo = _naive_ddim_update(x_lo, eps_lo, alpha_bar, t_lo, nxt[1])
    return ((x_hi + 1) / 2).clamp(0, 1).cpu()
