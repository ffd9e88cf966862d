"""Confidence intervals of paired EMA - raw differences, without scipy.

Two kinds, chosen by what the evaluation measured (`paired_interval`):

* several seeds (>= 2 paired differences): the t-interval mean ± t(0.975, n-1) * sd / sqrt(n),
  sd with ddof 1. The differences are paired per (checkpoint, seed): EMA and raw images of one
  sampling seed start from the same noise, so the seed's share of the noise cancels. With
  several training seeds, each training seed's difference is first averaged over its sampling
  seeds and the interval is over training seeds (the unit a claim about the recipe rests on).
* one seed: the percentile interval of ema_b - raw_b over the evaluation's bootstrap replicates
  (explore.evaluation.metrics.FidBootstrap), whose replicate b of both weight sets resamples the
  same generated images (eval.bootstrap_seed). It covers the sampling of the generated images only:
  not the real subset, not a second training run.

`t_quantile` is exact for integer degrees of freedom: the Student t CDF has a closed form then
(Abramowitz & Stegun 26.7.3-4), inverted by bisection; tests/test_stats.py checks it against
scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with integer `df` >= 1 (closed form)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df}")
    df = int(df)
    theta = math.atan2(abs(t), math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:  # A = 2/pi (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        total, term = 0.0, c
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        a = 2 / math.pi * (theta + s * total)
    else:  # A = sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        total, term = 0.0, 1.0
        for k in range(1, df // 2 + 1):
            total += term
            term *= c * c * (2 * k - 1) / (2 * k)
        a = s * total
    a = min(max(a, 0.0), 1.0)  # P(|T| < |t|)
    return 0.5 + a / 2 if t >= 0 else 0.5 - a / 2


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with integer `df` (bisection on `t_cdf`, ~1e-12)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


@dataclass(frozen=True)
class Interval:
    """A paired difference with its 95% interval (lo, hi NaN when there is none)."""

    estimate: float
    lo: float
    hi: float
    method: str        # "t over 3 sampling seeds", "bootstrap (200)", "" when none
    n: int             # differences the estimate averages

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.lo) or math.isnan(self.hi))

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.has_interval and (self.lo > 0 or self.hi < 0)


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, lo, hi): the t-interval of the mean of `values` (at least 2)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        raise ValueError("a t-interval needs at least 2 values")
    mean = float(x.mean())
    half = t_quantile(0.5 + level / 2, len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def percentile_interval(replicates: Sequence[float], level: float = LEVEL
                        ) -> tuple[float, float]:
    """(lo, hi): the percentile bootstrap interval of `replicates`."""
    x = np.asarray(replicates, dtype=float)
    lo, hi = np.percentile(x, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def paired_interval(diffs: dict[tuple[int, int], float],
                    boots: dict[tuple[int, int], np.ndarray] | None = None,
                    level: float = LEVEL) -> Interval | None:
    """The interval of a paired difference from its per-(training seed, sampling seed)
    values `diffs` and, for one unit, its paired bootstrap replicates `boots` (ema_b - raw_b).

    Several training seeds: t over training seeds (each the mean over its sampling seeds);
    one training seed and several sampling seeds: t over sampling seeds; one unit: the
    bootstrap percentile interval, or none. None when there is no difference at all."""
    if not diffs:
        return None
    train: dict[int, list[float]] = {}
    for (seed, _), d in diffs.items():
        train.setdefault(seed, []).append(d)
    if len(train) >= 2:
        means = [float(np.mean(v)) for v in train.values()]
        est, lo, hi = t_interval(means, level)
        return Interval(est, lo, hi, f"t over {len(means)} training seeds", len(diffs))
    values = list(diffs.values())
    if len(values) >= 2:
        est, lo, hi = t_interval(values, level)
        return Interval(est, lo, hi, f"t over {len(values)} sampling seeds", len(values))
    (unit, est), = diffs.items()
    reps = (boots or {}).get(unit)
    if reps is not None and len(reps) >= 2:
        lo, hi = percentile_interval(reps, level)
        return Interval(est, lo, hi, f"bootstrap over images ({len(reps)})", 1)
    return Interval(est, math.nan, math.nan, "", 1)
