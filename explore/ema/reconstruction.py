"""Post-hoc EMA maths (Karras et al. 2024, EDM2, section 3 and algorithm 3): the weights of any
power profile, as a linear combination of the power EMAs tracked during training. No file is
read here: the stage that finds the sources in a run folder and writes the results is
explore.evaluation.posthoc.

Sources: power EMAs tracked during training at known steps (in a run: every snapshot and the
tracked power EMAs of every checkpoint), taken once per (step, sigma_rel), at or before the
target's step.
A source i is the power profile p_i(tau) = (g_i + 1) tau^g_i / t_i^(g_i + 1) on [0, t_i]
(exactly: the discrete update gives the raw weights of step k the integral of p_i over (k-1, k]).

Target: the power profile p_r of the wanted sigma_rel (gamma_r) at step T. The weights are
sum_i x_i * source_i with x the least-squares fit of p_r by the p_i in L2([0, inf)):

    A x = b,   A_ij = <p_i, p_j>,   b_i = <p_i, p_r>,
    <p_a, p_b> = (g_a + 1)(g_b + 1) / (g_a + g_b + 1) * min(t_a, t_b)^(g_a + g_b + 1)
                 / (t_a^(g_a + 1) t_b^(g_b + 1))

solved in float64 (least squares, so repeated or nearly dependent sources do not break it),
then normalised to sum(x) = 1 so the result stays an average (EDM2 does the same). The fit's
quality is the relative profile error ||sum_i x_i p_i - p_r|| / ||p_r||; the weights are
accumulated in float64 and returned in float32.

The length of an exponential EMA of decay d at step T: its std, sqrt(d) / (1 - d) optimizer
steps, is matched by sigma_rel = sqrt(d) / ((1 - d) T), rounded to 3 significant digits (the
weight-set name). Unlike that exponential EMA, the power profile puts no weight on the initial
weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from explore.core.errors import ConfigError, UserError
from explore.ema.power import SIGMA_REL_MAX
from explore.ema.state import TrackInfo
from explore.ema.tensors import strip_prefixes


class PosthocError(UserError):
    pass


def profile_inner(t_a, g_a, t_b, g_b) -> np.ndarray:
    """<p_a, p_b> of power profiles (t: length in steps, g: exponent), broadcast, float64."""
    t_a, g_a, t_b, g_b = (np.asarray(x, dtype=np.float64) for x in (t_a, g_a, t_b, g_b))
    t_min = np.minimum(t_a, t_b)
    # in logs: t^(g + 1) overflows float64 for long runs and sharp profiles
    log_value = ((g_a + g_b + 1) * np.log(t_min) - (g_a + 1) * np.log(t_a)
                 - (g_b + 1) * np.log(t_b))
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * np.exp(log_value)


@dataclass
class Fit:
    coefficients: np.ndarray  # one per source, summing to 1
    profile_error: float      # ||sum x_i p_i - p_r|| / ||p_r|| before normalisation
    raw_sum: float            # sum of the least-squares coefficients before normalisation


def solve_coefficients(src_steps, src_gammas, step: float, gamma: float) -> Fit:
    """Least-squares coefficients x of sources (src_steps, src_gammas) for the target profile
    (step, gamma): A x = b (module docstring), normalised to sum 1."""
    t = np.asarray(src_steps, dtype=np.float64)
    g = np.asarray(src_gammas, dtype=np.float64)
    if t.size == 0:
        raise PosthocError("no snapshots to reconstruct from")
    a = profile_inner(t[:, None], g[:, None], t[None, :], g[None, :])
    b = profile_inner(t, g, step, gamma)
    # scale to unit diagonal first: entries span many orders of magnitude (1/t factors)
    d = 1.0 / np.sqrt(np.diag(a))
    y, *_ = np.linalg.lstsq(a * d[:, None] * d[None, :], b * d, rcond=1e-13)
    x = y * d
    rr = float(profile_inner(step, gamma, step, gamma))
    err2 = max(0.0, float(x @ a @ x - 2 * x @ b + rr))
    raw_sum = float(x.sum())
    if abs(raw_sum) < 1e-12:
        raise PosthocError(f"the snapshots cannot represent the profile gamma={gamma:.3g} at "
                           f"step {step:.0f} (coefficients sum to {raw_sum:.3g})")
    return Fit(x / raw_sum, math.sqrt(err2 / rr), raw_sum)


def sigma_rel_for_decay(decay: float, step: int) -> float:
    """sigma_rel of the power profile whose std, at step `step`, equals that of an exponential
    EMA of `decay`: sqrt(decay) / ((1 - decay) * step), rounded to 3 significant digits."""
    decay = float(decay)
    sigma = float(f"{math.sqrt(decay) / ((1.0 - decay) * step):.3g}")
    if sigma >= SIGMA_REL_MAX:
        raise ConfigError(f"decay={decay} at step {step} is an average over "
                          f"{math.sqrt(decay) / (1 - decay):.0f} steps, longer than any power "
                          f"profile of a {step}-step run can be (sigma_rel {sigma:.3g} >= "
                          f"{SIGMA_REL_MAX:.3f}, a near-uniform average of the whole run)")
    return sigma


# -- sources ---------------------------------------------------------------------------------------
@dataclass
class Source:
    step: int
    name: str        # phema@<sigma_rel>
    sigma_rel: float
    gamma: float
    path: Path       # where it is kept (a run's snapshot or checkpoint, under `emas`)


@dataclass
class Target:
    name: str
    sigma_rel: float
    gamma: float
    from_decay: float | None = None
    fit: Fit | None = None
    sources: list[Source] = field(default_factory=list)


# -- reconstruction --------------------------------------------------------------------------------
@torch.no_grad()
def reconstruct(targets: list[Target], sources: list[Source], step: int,
                read_states: Callable[[object], dict[str, TrackInfo]]
                ) -> dict[str, dict[str, torch.Tensor]]:
    """The weights of every target at `step` (name -> {entry: float32 tensor}). Each source's
    `path` is handed to `read_states` once (it returns the power EMAs stored there, by name:
    the caller reads files, this only adds); the sums are kept in float64."""
    usable = [s for s in sources if s.step <= step]
    for target in targets:
        target.sources = usable
        target.fit = solve_coefficients([s.step for s in usable], [s.gamma for s in usable],
                                        step, target.gamma)
    sums: dict[str, dict[str, torch.Tensor]] = {t.name: {} for t in targets}
    by_file: dict[Path, list[int]] = {}
    for i, s in enumerate(usable):
        by_file.setdefault(s.path, []).append(i)
    for path, indices in by_file.items():
        states = read_states(path)
        for i in indices:
            shadow = states[usable[i].name].shadow
            for target in targets:
                acc, c = sums[target.name], float(target.fit.coefficients[i])
                for k, v in shadow.items():
                    k = strip_prefixes(k)
                    if k not in acc:
                        acc[k] = torch.zeros(v.shape, dtype=torch.float64)
                    acc[k].add_(v.double(), alpha=c)
    return {name: {k: v.float() for k, v in acc.items()} for name, acc in sums.items()}


def compare(weights: dict[str, torch.Tensor], tracked: dict[str, torch.Tensor],
            raw: dict[str, torch.Tensor]) -> dict[str, float]:
    """Reconstructed vs tracked weights: max |diff|, rms(diff), and rms(diff) relative to
    rms(tracked - raw) (how far the average is from the raw weights)."""
    n, sq, ref, worst = 0, 0.0, 0.0, 0.0
    for k, v in tracked.items():
        d = (weights[k].double() - v.double())
        n += d.numel()
        sq += d.square().sum().item()
        ref += (v.double() - raw[k].double()).square().sum().item()
        worst = max(worst, d.abs().max().item()) if d.numel() else worst
    rms = math.sqrt(sq / max(n, 1))
    return {"max_abs_diff": worst, "rms_diff": rms,
            "rel_rms_diff": rms / math.sqrt(ref / max(n, 1)) if ref > 0 else math.nan}
