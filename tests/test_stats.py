"""Intervals of paired EMA - raw differences (analysis/stats/intervals.py): the t quantile
without scipy, coverage of a zero difference, exclusion of a large one, for the t-interval over
seeds and for the bootstrap over generated images' features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analysis.stats import (
    paired_interval,
    percentile_interval,
    t_cdf,
    t_interval,
    t_quantile,
)
from explore.evaluation import metrics as M

CASES = 100


def test_t_quantile_matches_the_table():
    # two-sided 95%: the values every statistics table prints
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 29: 2.045}
    for df, value in table.items():
        assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-4)
    assert t_quantile(0.025, 4) == pytest.approx(-2.776, abs=5e-4)
    assert t_quantile(0.975, 10_000) == pytest.approx(1.960, abs=1e-3)  # the normal's
    with pytest.raises(ValueError):
        t_cdf(1.0, 0)


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 41), 75, 300]:
        for p in (0.55, 0.9, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)
        for t in (-4.0, -0.3, 0.0, 1.1, 3.0):
            assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-12)


def test_t_interval_covers_a_zero_difference_and_excludes_a_large_one():
    """100 simulated studies of 5 sampling seeds: per seed, raw and EMA share the seed's noise
    (paired) plus their own; the true EMA - raw is 0, then -3."""
    rng = np.random.default_rng(0)
    covered = excluded = 0
    for _ in range(CASES):
        shared = rng.normal(0, 1.0, 5)          # the seed's share: cancels in the pair
        raw = 40 + shared + rng.normal(0, 0.3, 5)
        ema = 40 + shared + rng.normal(0, 0.3, 5)
        diffs = {(0, q): ema[q] - raw[q] for q in range(5)}
        ci = paired_interval(diffs)
        assert ci.method == "t over 5 sampling seeds"
        covered += ci.lo <= 0 <= ci.hi
        better = paired_interval({u: d - 3.0 for u, d in diffs.items()})
        excluded += better.significant and better.hi < 0
    assert covered >= 90
    assert excluded == CASES


def test_bootstrap_interval_covers_a_zero_difference_and_excludes_a_large_one():
    """100 simulated single-seed evaluations: generated features of raw and EMA share the
    seed's noise (a common latent) and differ by their own; the interval is the percentile
    bootstrap of ema_b - raw_b with the same resample indices for both, as evaluation does."""
    n, d, reps = 300, 6, 200
    g = torch.Generator().manual_seed(0)
    real = torch.randn(n, d, generator=g, dtype=torch.float64)
    stats = {"mu": real.mean(0).numpy(), "sigma": np.cov(real.numpy(), rowvar=False)}
    boot = M.FidBootstrap(stats)
    covered = excluded = 0
    for case in range(CASES):
        latent = torch.randn(n, d, generator=g, dtype=torch.float64)
        raw = latent + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
        ema = latent + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
        idx = M.bootstrap_indices(n, reps, boot_seed=0, sample_seed=case)
        fid_raw, fid_ema = (M.fid_from_features(x, stats) for x in (raw, ema))
        raw_b, ema_b = boot.replicates(raw, idx), boot.replicates(ema, idx)
        ci = paired_interval({(0, case): fid_ema - fid_raw}, {(0, case): ema_b - raw_b})
        assert ci.method == f"bootstrap over images ({reps})"
        covered += ci.lo <= 0 <= ci.hi
        shifted = ema + 0.4  # a mean shift of 0.4 per feature: FID +0.96 on average
        fid_s, s_b = M.fid_from_features(shifted, stats), boot.replicates(shifted, idx)
        worse = paired_interval({(0, case): fid_s - fid_raw}, {(0, case): s_b - raw_b})
        excluded += worse.significant and worse.lo > 0
    assert covered >= 90
    assert excluded == CASES


def test_which_interval_is_used():
    # several training seeds: over training seeds, each the mean of its sampling seeds
    diffs = {(0, 0): -1.0, (0, 1): -3.0, (1, 0): -2.5, (1, 1): -1.5}
    ci = paired_interval(diffs)
    assert ci.method == "t over 2 training seeds" and ci.n == 4
    half = t_quantile(0.975, 1) * 0.0 / math.sqrt(2)  # both training-seed means are -2.0
    assert (ci.estimate, ci.lo, ci.hi) == pytest.approx((-2.0, -2.0 - half, -2.0 + half))
    # one seed: bootstrap replicates when there are, else no interval
    boots = {(0, 42): np.linspace(-1, 1, 201)}
    ci = paired_interval({(0, 42): 0.5}, boots)
    assert (ci.lo, ci.hi) == pytest.approx((-0.95, 0.95)) and not ci.significant
    ci = paired_interval({(0, 42): 0.5})
    assert not ci.has_interval and not ci.significant and ci.method == ""
    assert paired_interval({}) is None
    mean, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert (mean, hi - mean) == pytest.approx((2.0, t_quantile(0.975, 2) / math.sqrt(3)))
    assert percentile_interval(np.arange(101)) == pytest.approx((2.5, 97.5))
