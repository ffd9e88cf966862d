"""DP path on the error-heatmap grid: brute force, the J+2 retry, naive == vectorised, validity."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from bench.hotpath.naive import naive_optimal_path
from explore.lift.dp_path import (
    check_path,
    fractional_grid_index,
    grid_diagonal,
    grid_timesteps,
    optimal_path,
    path_cost,
    path_to_timesteps,
)
from explore.nets.diffusion import CosineSchedule


def _random_inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positive errors spread over orders of magnitude, and an increasing log-SNR grid."""
    rng = np.random.default_rng(seed)
    e64 = np.exp(rng.normal(scale=2.0, size=(n, n)))
    e32 = np.exp(rng.normal(scale=2.0, size=(n, n)))
    lam = np.cumsum(rng.uniform(0.2, 3.0, size=n)) - 10.0
    return e64, e32, lam


def _trapezoid_cost(path, e64, e32, lam) -> float:
    """The STUDY.md cost, written independently of explore.lift.dp_path."""
    terms = []
    for (i, j), (i2, j2) in itertools.pairwise(path):
        terms.append((e64[i, j] + e64[i2, j2]) / 2 * abs(lam[i2] - lam[i]))
        terms.append((e32[i, j] + e32[i2, j2]) / 2 * abs(lam[j2] - lam[j]))
    return math.fsum(terms)


def _compositions(total: int, parts: int, top: int) -> list[tuple[int, ...]]:
    """All tuples of `parts` integers in [0, top] summing to `total`."""
    return [c for c in itertools.product(range(top + 1), repeat=parts) if sum(c) == total]


def _brute_force(e64, e32, lam, num_steps: int, max_jump: int):
    """Every legal path with exactly N moves; returns (best path, best cost, number of paths)."""
    n = len(lam)
    best, best_cost, count = None, math.inf, 0
    comps = _compositions(n - 1, num_steps, max_jump)
    for di_seq in comps:
        for dj_seq in comps:
            if any(di == 0 and dj == 0 for di, dj in zip(di_seq, dj_seq, strict=True)):
                continue  # a move that stays put
            count += 1
            path = [(0, 0)]
            for di, dj in zip(di_seq, dj_seq, strict=True):
                path.append((path[-1][0] + di, path[-1][1] + dj))
            cost = _trapezoid_cost(path, e64, e32, lam)
            if cost < best_cost:
                best, best_cost = path, cost
    return best, best_cost, count


@pytest.mark.parametrize(("n", "num_steps", "max_jump"),
                         [(5, 4, 2), (6, 4, 2), (6, 5, 3), (7, 4, 3), (6, 6, 2)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(n, num_steps, max_jump, seed):
    e64, e32, lam = _random_inputs(n, seed)
    want_path, want_cost, count = _brute_force(e64, e32, lam, num_steps, max_jump)
    assert count > 1  # a real choice was made
    path, cost = optimal_path(e64, e32, lam, num_steps=num_steps, max_jump=max_jump)
    assert cost == pytest.approx(want_cost, rel=1e-9, abs=1e-12)
    assert path == want_path
    check_path(path, n, num_steps, max_jump)
    assert path_cost(path, e64, e32, lam) == cost  # the DP's own float order, exactly


def test_dp64_matches_brute_force_cost():
    """Zeros for e32 (DP-64) make many paths tie; the optimal cost must still be the minimum."""
    e64, _, lam = _random_inputs(6, 3)
    e32 = np.zeros_like(e64)
    _, want_cost, _ = _brute_force(e64, e32, lam, 5, 2)
    path, cost = optimal_path(e64, e32, lam, num_steps=5, max_jump=2)
    check_path(path, 6, 5, 2)
    assert cost == pytest.approx(want_cost, rel=1e-9)
    assert cost == pytest.approx(_trapezoid_cost(path, e64, e32, lam), rel=1e-12)


@pytest.mark.parametrize(("n", "num_steps", "max_jump", "used_jump"),
                         [(7, 3, 1, 3), (7, 2, 1, 3), (9, 2, 1, 5), (6, 2, 2, 4)])
def test_unreachable_retries_with_larger_jump(n, num_steps, max_jump, used_jump):
    """N*J < n-1: no path with J; the result is brute force with J+2 (J+4 if that fails too)."""
    e64, e32, lam = _random_inputs(n, 7)
    assert _brute_force(e64, e32, lam, num_steps, max_jump)[2] == 0
    if used_jump > max_jump + 2:
        assert _brute_force(e64, e32, lam, num_steps, max_jump + 2)[2] == 0
    want_path, want_cost, _ = _brute_force(e64, e32, lam, num_steps, used_jump)
    path, cost = optimal_path(e64, e32, lam, num_steps=num_steps, max_jump=max_jump)
    assert path == want_path
    assert cost == pytest.approx(want_cost, rel=1e-9)
    check_path(path, n, num_steps, used_jump)
    assert max(max(i2 - i, j2 - j) for (i, j), (i2, j2) in itertools.pairwise(path)) > max_jump
    assert naive_optimal_path(e64, e32, lam, num_steps, max_jump) == (path, cost)


def test_forced_path_after_retry():
    """n=7, N=2, J=1 -> J=3, and the only 2-move path is (0,0) -> (3,3) -> (6,6)."""
    e64, e32, lam = _random_inputs(7, 0)
    path, _ = optimal_path(e64, e32, lam, num_steps=2, max_jump=1)
    assert path == [(0, 0), (3, 3), (6, 6)]


@pytest.mark.parametrize(("n", "num_steps"), [(5, 9), (5, 0), (30, 59)])
def test_impossible_step_counts_raise(n, num_steps):
    e64, e32, lam = _random_inputs(n, 0)
    with pytest.raises(ValueError, match="cannot be reached"):
        optimal_path(e64, e32, lam, num_steps=num_steps)
    with pytest.raises(ValueError, match="cannot be reached"):
        naive_optimal_path(e64, e32, lam, num_steps=num_steps)


def test_most_moves_possible_is_a_staircase():
    """N = 2(n-1): every move must be a single unit step."""
    e64, e32, lam = _random_inputs(4, 0)
    path, _ = optimal_path(e64, e32, lam, num_steps=6, max_jump=3)
    check_path(path, 4, 6, 1)


def test_bad_inputs_raise():
    e64, e32, lam = _random_inputs(5, 0)
    with pytest.raises(ValueError, match="shape"):
        optimal_path(e64[:4], e32, lam, num_steps=4)
    e64[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        optimal_path(e64, e32, lam, num_steps=4)
    with pytest.raises(ValueError, match="max_jump"):
        optimal_path(e32, e32, lam, num_steps=4, max_jump=0)


def _study_grid() -> tuple[np.ndarray, np.ndarray]:
    ts = grid_timesteps(30)
    return ts, CosineSchedule().log_snr(torch.as_tensor(ts)).numpy()


@pytest.mark.parametrize("kind", ["total", "dp64_zeros", "all_equal"])
def test_naive_equals_vectorised_study_size(kind):
    """30x30 grid, N=18, J=5: identical path and bit-identical cost, ties included."""
    ts, lam = _study_grid()
    rng = np.random.default_rng(11)
    e64 = np.exp(rng.normal(scale=3.0, size=(30, 30)))
    e32 = np.exp(rng.normal(scale=3.0, size=(30, 30)))
    if kind == "dp64_zeros":
        e32 = np.zeros_like(e32)
    elif kind == "all_equal":
        e64 = e32 = np.ones((30, 30))
    path, cost = optimal_path(e64, e32, lam, num_steps=18, max_jump=5)
    check_path(path, 30, 18, 5)
    assert naive_optimal_path(e64, e32, lam, num_steps=18, max_jump=5) == (path, cost)


def test_dp64_and_torch_inputs():
    """DP-64 (zeros for e32) gives a valid path whose cost only has e64 terms; tensors work."""
    _, lam = _study_grid()
    e64 = torch.rand(30, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.1
    path, cost = optimal_path(e64, torch.zeros(30, 30), torch.as_tensor(lam))
    check_path(path, 30, 18, 5)
    e = e64.numpy()
    only_64 = math.fsum((e[i, j] + e[i2, j2]) / 2 * abs(lam[i2] - lam[i])
                        for (i, j), (i2, j2) in itertools.pairwise(path))
    assert cost == pytest.approx(only_64, rel=1e-12)
    # moving along i costs at least the smallest error times the log-SNR span, so cost > 0
    assert cost >= 0.1 * (lam[-1] - lam[0]) * 0.999


def test_lower_error_on_one_side_pulls_the_path():
    """e32 cheap below the diagonal: DP-Total keeps j ahead of i (the 'low guides high' shape)."""
    _, lam = _study_grid()
    i, j = np.meshgrid(np.arange(30), np.arange(30), indexing="ij")
    e = np.where(j > i, 0.01, 1.0)
    path, _ = optimal_path(e, e, lam)
    assert sum(jj > ii for ii, jj in path) >= 15


def test_check_path_rejects_bad_paths():
    good = [(0, 0), (2, 1), (4, 4)]
    check_path(good, 5, 2, 3)
    for bad, n, steps, jump in [
        ([(0, 0), (2, 1)], 5, 2, 3),                    # too short
        ([(0, 1), (2, 1), (4, 4)], 5, 2, 3),            # wrong start
        ([(0, 0), (2, 1), (3, 4)], 5, 2, 3),            # wrong end
        ([(0, 0), (0, 0), (4, 4)], 5, 2, 4),            # stays put
        ([(0, 0), (3, 1), (2, 4), (4, 4)], 5, 3, 3),    # goes back
        ([(0, 0), (4, 1), (4, 4)], 5, 2, 3),            # jump too long
    ]:
        with pytest.raises(ValueError):
            check_path(bad, n, steps, jump)


def test_grid_and_timesteps():
    ts = grid_timesteps(30)
    assert ts.dtype == np.int64 and ts.shape == (30,)
    assert ts[0] == 999 and ts[-1] == 0 and ts[1] == 964 and ts[-2] == 34
    assert np.all(np.diff(ts) < 0)
    assert np.array_equal(ts, np.linspace(999, 0, 30).astype(int))
    t64, t32 = path_to_timesteps([(0, 0), (1, 3), (29, 29)], ts)
    assert t64 == [999, 964, 0] and t32 == [999, 895, 0]
    assert all(type(t) is int for t in t64 + t32)


def test_diagonal_and_fractional_index():
    diag = grid_diagonal(30, 18)
    assert len(diag) == 19 and diag[0] == (0, 0) and diag[-1] == (29, 29)
    assert all(i == j for i, j in diag)
    check_path(diag, 30, 18, 5)
    ts = grid_timesteps(30)
    assert np.allclose(fractional_grid_index(ts, ts), np.arange(30))
    ddim = np.arange(990, -1, -55)
    idx = fractional_grid_index(ddim, ts)
    assert idx[0] == pytest.approx((999 - 990) / (999 - 964)) and idx[-1] == 29
    assert np.all(np.diff(idx) > 0)
