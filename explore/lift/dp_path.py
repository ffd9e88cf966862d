"""The DP sampling path on the error-heatmap grid (STUDY.md "Error heatmap and DP path").

The grid has `n` timesteps, index 0 the noisiest (t = T-1) and index n-1 the cleanest (t = 0). A
path is a list of grid cells (i, j): i indexes the high ("64") scale's timestep, j the low ("32")
scale's. A DP path goes from (0, 0) to (n-1, n-1) in exactly N moves; a move (i, j) -> (i', j')
has i <= i' <= i + J, j <= j' <= j + J and does not stay put. Its cost is the trapezoid rule in
log-SNR, per scale:

    c = (e64[i,j] + e64[i',j']) / 2 * |lam[i'] - lam[i]|
        + (e32[i,j] + e32[i',j']) / 2 * |lam[j'] - lam[j]|

and `optimal_path` minimises the summed cost.

Tie-break (shared bit for bit with `bench.hotpath.naive.naive_optimal_path`): when several
predecessors of a cell give exactly the same float cost, the one that is smallest in
lexicographic (i, j) order wins. This is what the study's forward-relaxation loop (sources in
ascending (i, j) order, update on a strict `<`) did. Both implementations also add the two scale
terms to the running cost in the same order, `(D + c64) + c32`, so their float costs, and hence
their paths, are identical.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

Cell = tuple[int, int]
Offset = tuple[int, int]


def grid_timesteps(n: int = 30, T: int = 1000) -> np.ndarray:
    """The heatmap grid: linspace(T-1, 0, n) truncated to integers, index 0 = noisiest.

    Computed as the study did, `torch.linspace(...)` in float32 then truncated (`.long()`): for
    n = 30 this equals NumPy's float64 linspace, but for some n (e.g. 100) float32 rounding moves
    a few points down by one, and we follow the study there.
    """
    if n < 1:
        raise ValueError(f"grid size must be >= 1, got {n}")
    return torch.linspace(T - 1, 0, steps=n).long().numpy().astype(np.int64)


def path_to_timesteps(path: list[Cell], grid_timesteps: np.ndarray | list[int]
                      ) -> tuple[list[int], list[int]]:
    """Grid path -> (t_64 list, t_32 list): t_64[k] = grid[i_k], t_32[k] = grid[j_k]."""
    grid = np.asarray(grid_timesteps)
    return [int(grid[i]) for i, _ in path], [int(grid[j]) for _, j in path]


def grid_diagonal(n: int, num_steps: int) -> list[Cell]:
    """The grid diagonal, num_steps+1 points: k -> (d_k, d_k), d = linspace(0, n-1, N+1) floored.

    This is only for drawing (the study's heatmap figure draws it this way). The sampler's
    "diagonal" path (`explore.nets.sampling.diagonal_path`) is the plain DDIM timestep list for both
    scales, which lies between grid points; use `fractional_grid_index` to draw that exactly.
    When num_steps > n-1 some points repeat, so the result is not a valid DP path then.
    """
    d = np.linspace(0, n - 1, num_steps + 1).astype(int)
    return [(int(k), int(k)) for k in d]


def fractional_grid_index(timesteps: np.ndarray | list[int], grid_timesteps: np.ndarray | list[int]
                          ) -> np.ndarray:
    """Where timesteps fall on the grid, as fractional indices (linear in t between grid points).

    Lets a path given in timesteps (e.g. the DDIM list 990, 935, ..., 0) be drawn on the heatmap.
    """
    grid = np.asarray(grid_timesteps, dtype=np.float64)
    idx = np.arange(len(grid), dtype=np.float64)
    # np.interp needs increasing x; the grid runs from noisy (large t) to clean (t = 0)
    return np.interp(np.asarray(timesteps, dtype=np.float64), grid[::-1], idx[::-1])


def check_path(path: list[Cell], n: int, num_steps: int, max_jump: int) -> None:
    """Raise ValueError unless `path` is a valid DP path: (0,0) -> (n-1,n-1), N legal moves."""
    if len(path) != num_steps + 1:
        raise ValueError(f"path has {len(path)} points, expected {num_steps + 1}")
    if tuple(path[0]) != (0, 0) or tuple(path[-1]) != (n - 1, n - 1):
        raise ValueError(f"path runs {path[0]} -> {path[-1]}, expected (0, 0) -> {(n - 1, n - 1)}")
    for (i, j), (i2, j2) in zip(path[:-1], path[1:], strict=True):
        di, dj = i2 - i, j2 - j
        if not (0 <= di <= max_jump and 0 <= dj <= max_jump) or (di, dj) == (0, 0):
            raise ValueError(f"illegal move {(i, j)} -> {(i2, j2)} with max_jump={max_jump}")


def _as_float64(a: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def prepare_inputs(error_64, error_32, log_snr) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and convert the DP inputs to float64 NumPy: (n, n), (n, n), (n,), all finite."""
    e64, e32, lam = _as_float64(error_64), _as_float64(error_32), _as_float64(log_snr)
    n = lam.shape[0] if lam.ndim == 1 else -1
    if n < 1 or e64.shape != (n, n) or e32.shape != (n, n):
        raise ValueError(f"expected error_64, error_32 of shape (n, n) and log_snr of shape (n,); "
                         f"got {e64.shape}, {e32.shape}, {lam.shape}")
    for name, a in (("error_64", e64), ("error_32", e32), ("log_snr", lam)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} has non-finite values")
    return e64, e32, lam


def check_step_count(n: int, num_steps: int) -> None:
    """Raise ValueError when no max_jump reaches (n-1, n-1) from (0, 0) in exactly N moves.

    Every move raises i or j by at least one, so N <= 2(n-1) is necessary; with that, any
    J >= (n-1)/N works (give each scale min(N, n-1) nonzero moves, i's first, j's last), so the
    J + 2 retry always ends. N = 0 works only on a 1x1 grid.
    """
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    if num_steps > 2 * (n - 1) or (num_steps == 0 and n > 1):
        raise ValueError(f"(n-1, n-1) = {(n - 1, n - 1)} cannot be reached from (0, 0) in exactly "
                         f"{num_steps} moves on a {n}x{n} grid with any max_jump: need "
                         f"1 <= num_steps <= 2(n-1) = {2 * (n - 1)}")


def move_offsets(max_jump: int, n: int) -> list[Offset]:
    """Shifts (di, dj) in tie-break order: predecessor (i'-di, j'-dj) ascending = (di, dj) desc.

    Includes the forbidden (0, 0) last (it gets an infinite cost), so the list is exactly the
    (J+1) x (J+1) block of sliding windows used by the DP. J = min(max_jump, n-1): longer jumps
    cannot fit on the grid.
    """
    steps = range(min(max_jump, n - 1), -1, -1)
    return [(di, dj) for di in steps for dj in steps]


def _move_costs(e: np.ndarray, lam: np.ndarray, di: int, dj: int, axis: int) -> np.ndarray:
    """One scale's trapezoid cost for every move by (di, dj), indexed by the move's source.

    Result[a, b] is the cost of (a, b) -> (a+di, b+dj): (e[src] + e[dst]) / 2 * |dlam| where dlam
    is along i for axis 0 (the 64 scale) and along j for axis 1 (the 32 scale).
    """
    n = lam.shape[0]
    src, dst = e[: n - di, : n - dj], e[di:, dj:]
    if axis == 0:
        dlam = np.abs(lam[di:] - lam[: n - di])[:, None]
    else:
        dlam = np.abs(lam[dj:] - lam[: n - dj])[None, :]
    return (src + dst) / 2 * dlam


def _cost_stack(e: np.ndarray, lam: np.ndarray, offsets: list[Offset], axis: int) -> np.ndarray:
    """(O, n, n): [o, i', j'] = one scale's cost of the move by offsets[o] that ends at (i', j').

    inf where that move would start off the grid, and for the forbidden (0, 0).
    """
    n = lam.shape[0]
    out = np.full((len(offsets), n, n), np.inf)
    for o, (di, dj) in enumerate(offsets):
        if (di, dj) != (0, 0):
            out[o, di:, dj:] = _move_costs(e, lam, di, dj, axis)
    return out


def _dp_tables(e64: np.ndarray, e32: np.ndarray, lam: np.ndarray, num_steps: int,
               max_jump: int) -> tuple[np.ndarray, np.ndarray, list[Offset]]:
    """Layered DP. D[k, i, j] = min cost of reaching (i, j) in exactly k moves (inf if impossible);
    arg[k, i, j] = index into `offsets` of the best last move (meaningless where D is inf).

    The only Python loop is over the N layers. Per layer, the previous layer padded with inf by J
    on the top/left gives, through a (J+1) x (J+1) block of sliding (n, n) windows, every cell's
    predecessor for every offset at once; argmin over offsets takes the first minimum, which is the
    documented tie-break because the windows come in `move_offsets` order.
    """
    n = lam.shape[0]
    offsets = move_offsets(max_jump, n)
    jump = min(max_jump, n - 1)
    c64, c32 = _cost_stack(e64, lam, offsets, 0), _cost_stack(e32, lam, offsets, 1)
    D = np.full((num_steps + 1, n, n), np.inf)
    D[0, 0, 0] = 0.0
    arg = np.zeros((num_steps + 1, n, n), dtype=np.int16)
    padded = np.full((n + jump, n + jump), np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (n, n))  # [a, b]: shift (J-a, J-b)
    for k in range(1, num_steps + 1):
        padded[jump:, jump:] = D[k - 1]
        # same float expression as the naive loop: (D + c64) + c32
        cand = windows.reshape(len(offsets), n, n) + c64 + c32
        best = cand.argmin(axis=0)
        arg[k] = best
        D[k] = np.take_along_axis(cand, best[None], axis=0)[0]
    return D, arg, offsets


def _backtrack(arg: np.ndarray, offsets: list[Offset], n: int, num_steps: int) -> list[Cell]:
    i, j = n - 1, n - 1
    path = [(i, j)]
    for k in range(num_steps, 0, -1):
        di, dj = offsets[arg[k, i, j]]
        i, j = i - di, j - dj
        path.append((i, j))
    return path[::-1]


def optimal_path(error_64, error_32, log_snr, num_steps: int = 18, max_jump: int = 5
                 ) -> tuple[list[Cell], float]:
    """Minimum-cost path (0,0) -> (n-1,n-1) in exactly `num_steps` moves, and its cost.

    cost = sum over moves of (e64[i,j]+e64[i',j'])/2*|lam[i']-lam[i]|
                           + (e32[i,j]+e32[i',j'])/2*|lam[j']-lam[j]|
    with moves limited to i <= i' <= i+J, j <= j' <= j+J, (i',j') != (i,j), J = max_jump. If the
    corner cannot be reached in exactly N moves, retry with J+2 (repeatedly, as the study did);
    raise ValueError when no J can reach it (N = 0 on a grid > 1x1, or N > 2(n-1)). DP-64 passes
    zeros for error_32. Inputs: NumPy arrays or torch tensors, error_* (n, n), log_snr (n,).
    Ties: see the module docstring.
    """
    e64, e32, lam = prepare_inputs(error_64, error_32, log_snr)
    n = lam.shape[0]
    if max_jump < 1:
        raise ValueError(f"max_jump must be >= 1, got {max_jump}")
    check_step_count(n, num_steps)
    if n == 1:
        return [(0, 0)], 0.0
    jump = max_jump
    while True:
        D, arg, offsets = _dp_tables(e64, e32, lam, num_steps, jump)
        if np.isfinite(D[num_steps, n - 1, n - 1]):
            break
        if jump >= n - 1:  # cannot happen after check_step_count; never loop forever
            raise RuntimeError(f"corner unreachable in {num_steps} moves even with max_jump={jump}")
        log.info("corner unreachable in %d moves with max_jump=%d; retrying with %d",
                 num_steps, jump, jump + 2)
        jump += 2
    return _backtrack(arg, offsets, n, num_steps), float(D[num_steps, n - 1, n - 1])


def path_cost(path: list[Cell], error_64, error_32, log_snr) -> float:
    """The summed trapezoid cost of a given path, accumulated in the DP's float order."""
    e64, e32, lam = prepare_inputs(error_64, error_32, log_snr)
    total = 0.0
    for (i, j), (i2, j2) in zip(path[:-1], path[1:], strict=True):
        c64 = (e64[i, j] + e64[i2, j2]) / 2 * abs(lam[i2] - lam[i])
        c32 = (e32[i, j] + e32[i2, j2]) / 2 * abs(lam[j2] - lam[j])
        total = total + c64 + c32
    return float(total)
