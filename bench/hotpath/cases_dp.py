"""DP-path benchmark: explore.lift.dp_path.optimal_path vs four nested loops on a synthetic heatmap,
and whether both give the identical path and cost (DP-Total and DP-64)."""

from __future__ import annotations

import numpy as np
import torch

from explore.lift.dp_path import grid_timesteps, optimal_path
from explore.lift.heatmap import gamma_snr
from explore.nets.diffusion import CosineSchedule

from ..common.timing import measure, ratio
from .config import BenchConfig
from .naive import naive_optimal_path


def synthetic_heatmap(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A heatmap-like input: gamma(SNR) at each scale's timestep times log-normal noise."""
    schedule = CosineSchedule()
    ts = grid_timesteps(n, schedule.num_steps)
    gamma = gamma_snr(schedule, ts)
    rng = np.random.default_rng(seed)
    e64 = gamma[:, None] * rng.lognormal(0.0, 1.0, (n, n))
    e32 = gamma[None, :] * rng.lognormal(0.0, 1.0, (n, n))
    return e64, e32, schedule.log_snr(torch.as_tensor(ts)).numpy()


def bench_dp(cfg: BenchConfig, device: torch.device) -> dict:
    e64, e32, lam = synthetic_heatmap(cfg.dp_grid)
    args = (cfg.dp_steps, cfg.dp_max_jump)
    results: dict[str, tuple] = {}

    def harness():
        results["harness"] = optimal_path(e64, e32, lam, *args)

    def naive():
        results["naive"] = naive_optimal_path(e64, e32, lam, *args)

    stats = measure({"harness": harness, "naive": naive}, cfg.reps, 1, device)
    (hp, hc), (np_, nc) = results["harness"], results["naive"]
    zeros = np.zeros_like(e32)  # DP-64 must agree too
    dp64 = optimal_path(e64, zeros, lam, *args) == naive_optimal_path(e64, zeros, lam, *args)
    return {"config": {"grid": cfg.dp_grid, "steps": cfg.dp_steps, "max_jump": cfg.dp_max_jump,
                       "reps": cfg.reps, "input": "synthetic heatmap: gamma(SNR) x log-normal",
                       "harness": "explore.lift.dp_path.optimal_path",
                       "naive": "four nested loops per layer (bench.hotpath.naive)"},
            "harness": stats["harness"], "naive": stats["naive"],
            "ratio": ratio(stats["naive"]["median_s"], stats["harness"]["median_s"]),
            "paths_identical": hp == np_ and dp64, "costs_identical": hc == nc,
            "cost": hc, "path": [list(p) for p in hp]}
