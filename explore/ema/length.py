"""The length of an average on one axis for every kind: sigma_rel (EDM2: the std of the averaging
profile over training time, relative to the training time so far) and the half-life (the age
below which half of the averaging weight lies), in optimizer steps, images and epochs.

Raw weights have length 0. A power-function EMA of exponent gamma at step t has, by
construction, sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))) and the half-life
t (1 - 0.5^(1 / (gamma + 1))) (its profile's weight on ages below h is 1 - (1 - h/t)^(gamma+1)).

**An exponential EMA of constant decay d after n averaging updates** (one every `update_every`
optimizer steps, after `start_step`) puts weight (1 - d) d^a on the weights of age a = 0..n-1
updates and d^n on its initial weights (age n): the age is X = min(A, n) with A geometric,
P(A > a) = d^(a+1). With E[X] = sum_{a<n} P(X > a) and E[X^2] = sum_{a<n} (2a + 1) P(X > a):

    E[X]   = T1 = d (1 - d^n) / (1 - d)
    E[X^2] = T2 = T1 + 2 d^2 (1 - n d^(n-1) + (n - 1) d^n) / (1 - d)^2
    var    = E[X^2] - E[X]^2        (-> d / (1 - d)^2 as n -> inf: std sqrt(d) / (1 - d))

With bias correction (the initial weights get no weight) X = A given A < n:
E[X] = (T1 - n d^n) / (1 - d^n), E[X^2] = (T2 - n^2 d^n) / (1 - d^n). sigma_rel = std in
optimizer steps (update_every x the std in updates) / the optimizer steps so far; its half-life
is ln(1/2) / ln(d) updates while that is below n (else the initial weights hold half or more:
the half-life is n). So a fixed decay's sigma_rel shrinks as training goes on: 0.9999 has
sigma_rel ~0.5 at step 20k and ~0.05 at step 200k (why raw beats EMA early and may lose late).
Decays that change with t (warm-up rules) are integrated numerically from their sequence.

EMA length in images (EDM's convention): the decay per optimizer step of batch B for a half-life
of H images is 0.5^(B / H); that keeps the EMA's length in images when the batch changes
(Busbridge et al. 2023's scaling rule, decay^kappa for a kappa times larger batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from explore.ema.decay import warmup_decay


# -- exponential, constant decay -------------------------------------------------------------------
def exponential_moments(decay: float, n: int, bias_correction: bool = False
                        ) -> tuple[float, float]:
    """(mean, variance) of the age, in averaging updates, of a constant-decay EMA after n
    updates (module docstring)."""
    d, n = float(decay), int(n)
    if n <= 0:
        return 0.0, 0.0
    if d <= 0.0:
        return 0.0, 0.0  # the latest weights only
    dn = d ** n
    t1 = d * (1 - dn) / (1 - d)
    if (1 - d) * n < 0.1:  # few updates for the window: the closed form below would cancel
        a = np.arange(n, dtype=np.float64)
        t2 = t1 + 2 * d * float(np.sum(a * np.exp(a * math.log(d))))  # sum_{a<n} a d^a
    else:
        t2 = t1 + 2 * d * d * (1 - n * d ** (n - 1) + (n - 1) * dn) / (1 - d) ** 2
    if bias_correction:
        m1, m2 = (t1 - n * dn) / (1 - dn), (t2 - n * n * dn) / (1 - dn)
    else:
        m1, m2 = t1, t2
    return m1, max(0.0, m2 - m1 * m1)


def exponential_half_life(decay: float, n: int, bias_correction: bool = False) -> float:
    """Age in updates below which half the averaging weight lies (n when the initial weights
    hold half or more)."""
    d = float(decay)
    if d <= 0.0 or n <= 0:
        return 0.0
    h = math.log(0.5) / math.log(d)
    if bias_correction:  # weight below age a: (1 - d^a) / (1 - d^n) = 1/2
        return math.log(0.5 * (1 + d ** n)) / math.log(d)
    return min(h, float(n))


# -- any sequence of decays (warm-up rules) --------------------------------------------------------
def profile_from_decays(decays: np.ndarray, bias_correction: bool = False) -> np.ndarray:
    """Weights by age (0 = newest, last = the initial weights) of an EMA updated with `decays`
    in order: w(theta_j) = (1 - d_j) prod_{k>j} d_k, w(theta_0) = prod_k d_k."""
    d = np.asarray(decays, dtype=np.float64)
    with np.errstate(divide="ignore"):
        logs = np.log(d)
    after = np.concatenate([np.cumsum(logs[::-1])[::-1][1:], [0.0]])  # sum_{k>j} log d_k
    w = np.concatenate([[np.exp(after[0] + logs[0])], (1 - d) * np.exp(after)])  # theta_0..n
    if bias_correction:
        w[0] = 0.0
        w /= w.sum()
    return w[::-1]  # by age: newest first


def profile_moments(weights_by_age: np.ndarray, unit: float = 1.0) -> tuple[float, float]:
    a = np.arange(len(weights_by_age), dtype=np.float64) * unit
    w = weights_by_age / weights_by_age.sum()
    m1 = float(np.sum(a * w))
    return m1, float(np.sum((a - m1) ** 2 * w))


def profile_half_life(weights_by_age: np.ndarray) -> float:
    c = np.cumsum(weights_by_age) / weights_by_age.sum()
    return float(np.searchsorted(c, 0.5))


# -- one axis for every weight set -----------------------------------------------------------------
@dataclass(frozen=True)
class Length:
    sigma_rel: float        # std of the averaging profile / optimizer steps so far
    half_life_steps: float  # in optimizer steps

    def half_life_kimg(self, batch_size: int | None) -> float | None:
        return None if not batch_size else self.half_life_steps * batch_size / 1000.0

    def half_life_epochs(self, steps_per_epoch: int | None) -> float | None:
        return None if not steps_per_epoch else self.half_life_steps / steps_per_epoch


RAW = Length(0.0, 0.0)


def power_length(sigma_rel: float, gamma: float, step: int) -> Length:
    return Length(float(sigma_rel), float(step) * (1 - 0.5 ** (1 / (float(gamma) + 1))))


def exponential_length(decay: float, step: int, *, updates: int | None = None,
                       update_every: int = 1, start_step: int = 0,
                       warmup: str | None = None, inv_gamma: float = 1.0,
                       power: float = 2 / 3, min_decay: float = 0.0,
                       bias_correction: bool = False) -> Length:
    """Length of an exponential EMA (explore.ema.EMA's rules) at optimizer step `step`.

    The weights followed the raw ones until `start_step`: those steps are part of the
    initial weights (age `updates`). `updates`: averaging updates made (default from step).
    """
    step = int(step)
    if step <= 0:
        return RAW
    n = int(updates) if updates is not None else max(0, step - start_step) // update_every
    if warmup is None:  # each averaging update applies decay^update_every
        m1, var = exponential_moments(decay ** update_every, n, bias_correction)
        half = exponential_half_life(decay ** update_every, n, bias_correction)
    else:
        t = np.arange(n, dtype=np.float64) * update_every
        ds = np.array([warmup_decay(warmup, int(x), decay, inv_gamma, power, min_decay)
                       for x in t]) ** update_every
        w = profile_from_decays(ds, bias_correction)
        m1, var = profile_moments(w)
        half = profile_half_life(w)
    return Length(math.sqrt(var) * update_every / step, half * update_every)
