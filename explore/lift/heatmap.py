"""Error heatmap of a LIFT model over (t_64, t_32) (STUDY.md "Error heatmap and DP path").

"64" is the high scale (the image size S) and "32" the low scale (S/2), whatever S is. For a grid
cell (i, j) the high batch is noised to t_i and the low batch (bilinear downsample of the clean
high images) to t_j, each with fresh noise, and per scale s

    error_s[i, j] = gamma(SNR(t_s)) * mean_b sum_{c,h,w} v_s * mean_k (J_s (sqrt(v_s) u_k))^2
                  ~= gamma(SNR(t_s)) * v_s^2 * mean_b ||J_s||_F^2

with J_64 = d eps_64 / d x_64 (x_32 held fixed), J_32 = d eps_32 / d x_32 (x_64 held fixed), u_k
K Rademacher probes, v_s = 1 / (H_s W_s) and gamma(SNR) = 1 / (SNR (1 + SNR)).

Reading of the spec (literal, and what the study's code did): the probes are scaled by sqrt(v)
*and* the averaged squared jvp is multiplied by v again, so the estimate is v^2 ||J||_F^2, not
v ||J||_F^2. The factor v^2 differs between the scales (1/S^4 vs 16/S^4), so it changes the
balance of error_64 and error_32 in DP-Total; we keep it because that is the study's heatmap.
"Average over the batch" is over the images of one cell; J is per image (the model mixes nothing
across the batch: GroupNorm, attention and convolutions act per sample), so probing the whole batch
at once gives per-image estimates.

Speed: one forward-mode pass per chunk of cells. Cells are stacked along the batch, and the 2K
tangents ((u_k, 0) for the high scale, (0, u_k) for the low one) go through `torch.func.vmap` over
`torch.func.jvp`, so the primal is computed once per chunk rather than once per probe. All random
draws of a cell come from its own CPU generator seeded by (seed, i, j), so results do not depend
on the chunking, the device or the order in which cells are computed. For the study's LiftUNet
the forward-mode pass is written out instead (explore.lift.heatmap_jvp, checked against
torch.func on the first chunk). The figure is explore.lift.heatmap_plot.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from explore.core.files import atomic_write
from explore.lift.dp_path import grid_timesteps
from explore.lift.heatmap_jvp import CheckedTangents, fast_path_supported
from explore.nets.diffusion import CosineSchedule
from explore.nets.models import downsample

log = logging.getLogger(__name__)

FORMAT = "lift-error-heatmap-v1"
# CPU chunks: cells x batch x S^2 pixels per forward. Small models gain from big chunks (per-op
# overhead), the smoke model (32x32) did best at 1-2 cells of 4 images (cache), so aim between.
CPU_PIXELS_PER_FORWARD = 8192
CUDA_MEMORY_FRACTION = 0.5  # share of the free GPU memory the auto-sized chunks may use
MAX_CELLS_PER_FORWARD = 64


class HeatmapFileError(ValueError):
    """A heatmap file that cannot be read (truncated, corrupt, or not a heatmap)."""


@dataclass
class Heatmap:
    """Per-scale error on an n x n grid; index 0 = noisiest; cell [i, j] = (t_64[i], t_32[j])."""

    timesteps: np.ndarray  # (n,) int64, the grid timesteps (both scales use the same grid)
    log_snr: np.ndarray  # (n,) float64, log SNR of the grid timesteps
    error_64: np.ndarray  # (n, n) float64
    error_32: np.ndarray  # (n, n) float64
    grid_size: int
    num_probes: int
    seed: int
    num_images: int

    @property
    def error_total(self) -> np.ndarray:
        """error_64 + error_32."""
        return self.error_64 + self.error_32

    def save(self, path: str | os.PathLike) -> None:
        """Write a .npz exactly at `path`, atomically (temp file in the same folder, fsync, rename).
        """
        arrays = {
            "format": np.array(FORMAT),
            "timesteps": np.asarray(self.timesteps, dtype=np.int64),
            "log_snr": np.asarray(self.log_snr, dtype=np.float64),
            "error_64": np.asarray(self.error_64, dtype=np.float64),
            "error_32": np.asarray(self.error_32, dtype=np.float64),
            "grid_size": np.array(self.grid_size, dtype=np.int64),
            "num_probes": np.array(self.num_probes, dtype=np.int64),
            "seed": np.array(self.seed, dtype=np.int64),
            "num_images": np.array(self.num_images, dtype=np.int64),
        }
        atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Heatmap:
        """Read a file written by `save`; HeatmapFileError (naming the file) if it is unreadable."""
        try:
            with np.load(path, allow_pickle=False) as z:
                fmt = str(z["format"])
                if fmt != FORMAT:
                    raise HeatmapFileError(f"{path}: format {fmt!r}, expected {FORMAT!r}")
                hm = cls(timesteps=z["timesteps"], log_snr=z["log_snr"], error_64=z["error_64"],
                         error_32=z["error_32"], grid_size=int(z["grid_size"]),
                         num_probes=int(z["num_probes"]), seed=int(z["seed"]),
                         num_images=int(z["num_images"]))
        except (FileNotFoundError, HeatmapFileError):
            raise
        except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError, ...
            raise HeatmapFileError(f"{path}: not a readable heatmap file "
                                   f"({type(e).__name__}: {e})") from e
        n = hm.grid_size
        if (hm.timesteps.shape != (n,) or hm.log_snr.shape != (n,)
                or hm.error_64.shape != (n, n) or hm.error_32.shape != (n, n)):
            raise HeatmapFileError(f"{path}: array shapes do not match grid_size={n}")
        return hm


# ------------------------------------------------------------------------------------------------
# pieces shared with bench.hotpath.naive.naive_error_heatmap
# ------------------------------------------------------------------------------------------------


def pick_images(images_uint8: torch.Tensor | np.ndarray, count: int = 16, seed: int = 0
                ) -> torch.Tensor:
    """`count` distinct images chosen by `seed`, as float32 (count, C, S, S) in [-1, 1].

    Input: uint8 (N, C, S, S) (or (N, S, S, C), recognised by a last dim of 1 or 3 and a second
    dim that is not). Choice: the first `count` of torch.randperm(N) under a CPU generator seeded
    with `seed`; the value map is x / 127.5 - 1.
    """
    x = torch.as_tensor(images_uint8)
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"expected a uint8 (N, C, S, S) batch, got {x.dtype} {tuple(x.shape)}")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if not 0 < count <= x.shape[0]:
        raise ValueError(f"cannot pick {count} images out of {x.shape[0]}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=g)[:count]
    return x[idx].float() / 127.5 - 1.0


def gamma_snr(schedule: CosineSchedule, timesteps: np.ndarray) -> np.ndarray:
    """Chain-rule factor gamma(SNR) = 1 / (SNR (1 + SNR)) at each timestep, float64."""
    snr = schedule.snr(torch.as_tensor(np.asarray(timesteps), dtype=torch.long)).numpy()
    return 1.0 / (snr * (1.0 + snr))


def hutchinson_v(x: torch.Tensor) -> float:
    """v = 1 / (H * W) for a (B, C, H, W) batch: the per-pixel probe variance of the study."""
    return 1.0 / (x.shape[-2] * x.shape[-1])


@dataclass
class CellDraws:
    """All random numbers of one grid cell (CPU float32)."""

    noise_hi: torch.Tensor  # (B, C, S, S) standard normal
    noise_lo: torch.Tensor  # (B, C, S/2, S/2) standard normal
    probes_hi: torch.Tensor  # (K, B, C, S, S) Rademacher +-1
    probes_lo: torch.Tensor  # (K, B, C, S/2, S/2) Rademacher +-1


def cell_seed(seed: int, i: int, j: int) -> int:
    """A 63-bit seed for cell (i, j), mixed from (seed, i, j) by NumPy's SeedSequence."""
    state = np.random.SeedSequence([seed, i, j]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


def cell_draws(seed: int, i: int, j: int, batch: int, hi_shape: tuple[int, ...],
               lo_shape: tuple[int, ...], num_probes: int) -> CellDraws:
    """Draw, in this order, noise_hi, noise_lo, probes_hi, probes_lo from the cell's own generator.

    A CPU generator per cell makes the numbers the same whatever the chunking or device.
    """
    g = torch.Generator().manual_seed(cell_seed(seed, i, j))
    noise_hi = torch.randn((batch, *hi_shape), generator=g)
    noise_lo = torch.randn((batch, *lo_shape), generator=g)
    probes_hi = torch.randint(0, 2, (num_probes, batch, *hi_shape), generator=g).float() * 2 - 1
    probes_lo = torch.randint(0, 2, (num_probes, batch, *lo_shape), generator=g).float() * 2 - 1
    return CellDraws(noise_hi, noise_lo, probes_hi, probes_lo)


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


@contextlib.contextmanager
def inference_context(model: nn.Module) -> Iterator[None]:
    """Eval mode, no autograd graph, normal (non-inference) tensors; restores the training flag.

    Forward-mode AD (jvp) does not need a backward graph, so no_grad only saves memory; leaving
    inference_mode makes jvp work even when the caller is inside torch.inference_mode(). SDPA's
    fused kernels (flash, memory-efficient; CUDA and CPU) have no forward-AD formula (pytorch
    issues 128971, 117629), so attention is pinned to the math kernel, which jvp supports.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(False),
            torch.no_grad(),
            sdpa_kernel([SDPBackend.MATH]),
            warnings.catch_warnings(),
        ):
            # torch's first jvp loads its decompositions through torch.jit.script: internal noise
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated",
                                    category=FutureWarning)
            yield
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------------------
# the batched estimator
# ------------------------------------------------------------------------------------------------


def _chunk_inputs(schedule: CosineSchedule, x_hi: torch.Tensor, x_lo: torch.Tensor,
                  ts: np.ndarray, cells: list[tuple[int, int]], seed: int, num_probes: int):
    """Noised batches, timesteps and scaled probes of a chunk of cells, cells stacked on the batch.

    Returns z_hi, z_lo (c*b, ...), t_hi, t_lo (c*b,), u_hi (K, c*b, C, S, S), u_lo (K, c*b, C,
    S/2, S/2): probes of cell m sit at batch rows m*b .. m*b+b-1, like its noised images.
    """
    device, dtype = x_hi.device, x_hi.dtype
    b, c = x_hi.shape[0], len(cells)
    draws = [cell_draws(seed, i, j, b, x_hi.shape[1:], x_lo.shape[1:], num_probes)
             for i, j in cells]
    t_hi = torch.tensor([int(ts[i]) for i, _ in cells]).repeat_interleave(b).to(device)
    t_lo = torch.tensor([int(ts[j]) for _, j in cells]).repeat_interleave(b).to(device)
    noise_hi = torch.cat([d.noise_hi for d in draws]).to(device, dtype)
    noise_lo = torch.cat([d.noise_lo for d in draws]).to(device, dtype)
    z_hi = schedule.q_sample(x_hi.repeat(c, 1, 1, 1), t_hi, noise_hi)
    z_lo = schedule.q_sample(x_lo.repeat(c, 1, 1, 1), t_lo, noise_lo)
    u_hi = torch.cat([d.probes_hi for d in draws], dim=1).to(device, dtype)
    u_lo = torch.cat([d.probes_lo for d in draws], dim=1).to(device, dtype)
    return z_hi, z_lo, t_hi, t_lo, u_hi * math.sqrt(hutchinson_v(x_hi)), \
        u_lo * math.sqrt(hutchinson_v(x_lo))


def _tangents_functorch(model: nn.Module, z_hi, z_lo, t_hi, t_lo, u_hi, u_lo):
    """(J_64 u_k, J_32 u_k) for every probe k, for any model, with torch.func.

    The 2K tangents ((u_k, 0) for the high scale, (0, u_k) for the low one) go through
    `torch.func.vmap` over `torch.func.jvp`: one shared primal pass. Returns (K, N, ...) each.
    """
    k = u_hi.shape[0]
    tan_hi = torch.cat([u_hi, torch.zeros_like(u_hi)])
    tan_lo = torch.cat([torch.zeros_like(u_lo), u_lo])

    def f(a: torch.Tensor, b_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return model(a, b_, t_hi, t_lo)

    def tangent_out(th: torch.Tensor, tl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.func.jvp(f, (z_hi, z_lo), (th, tl))[1]

    jv_hi, jv_lo = torch.func.vmap(tangent_out)(tan_hi, tan_lo)
    return jv_hi[:k], jv_lo[k:]


def _estimates(jv_hi: torch.Tensor, jv_lo: torch.Tensor, num_cells: int, v_hi: float,
               v_lo: float) -> tuple[np.ndarray, np.ndarray]:
    """mean_b sum_chw v * mean_k (J u_k)^2 per cell, from (K, c*b, ...) tangent outputs."""
    est_hi = ((jv_hi ** 2).mean(0) * v_hi).sum(dim=(1, 2, 3)).view(num_cells, -1).mean(1)
    est_lo = ((jv_lo ** 2).mean(0) * v_lo).sum(dim=(1, 2, 3)).view(num_cells, -1).mean(1)
    return est_hi.double().cpu().numpy(), est_lo.double().cpu().numpy()


def _chunk_estimates(model: nn.Module, schedule: CosineSchedule, x_hi: torch.Tensor,
                     x_lo: torch.Tensor, ts: np.ndarray, cells: list[tuple[int, int]], seed: int,
                     num_probes: int, tangents=None) -> tuple[np.ndarray, np.ndarray]:
    """Raw Hutchinson estimates (before gamma) of both scales for a chunk of cells, one pass.

    Returns two (len(cells),) float64 arrays: mean_b sum_chw v * mean_k (J (sqrt(v) u_k))^2.
    `tangents`: the function giving (J_64 u_k, J_32 u_k); default `_tangents_functorch`.
    """
    z_hi, z_lo, t_hi, t_lo, u_hi, u_lo = _chunk_inputs(schedule, x_hi, x_lo, ts, cells, seed,
                                                       num_probes)
    jv_hi, jv_lo = (tangents or _tangents_functorch)(model, z_hi, z_lo, t_hi, t_lo, u_hi, u_lo)
    return _estimates(jv_hi, jv_lo, len(cells), hutchinson_v(x_hi), hutchinson_v(x_lo))


def _tangent_function(model: nn.Module):
    """The fastest correct way to get a chunk's tangents for this model: for a LiftUNet the
    written-out pass of explore.lift.heatmap_jvp (checked on its first chunk), else torch.func."""
    return (CheckedTangents(_tangents_functorch) if fast_path_supported(model)
            else _tangents_functorch)


def _cuda_cells_per_forward(device: torch.device, peak_one_cell: int) -> int:
    """How many cells fit in CUDA_MEMORY_FRACTION of the memory the process can still use."""
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    fit = int(CUDA_MEMORY_FRACTION * (free + cached) // max(peak_one_cell, 1))
    return max(1, min(fit, MAX_CELLS_PER_FORWARD))


def error_heatmap(model: nn.Module, schedule: CosineSchedule, images: torch.Tensor, *,
                  grid_size: int = 30, num_probes: int = 4, seed: int = 0,
                  cells_per_forward: int | None = None, progress: bool = True) -> Heatmap:
    """The study's error heatmap of a LIFT model (see the module docstring for the formula).

    images: float (B, 3, S, S) in [-1, 1] (e.g. from `pick_images`); the low scale is their
    `downsample`. cells_per_forward: grid cells per forward pass; None picks
    CPU_PIXELS_PER_FORWARD // (B S^2) on the CPU, and on CUDA measures the peak memory of one
    cell and fills CUDA_MEMORY_FRACTION of the free memory. The numbers do not depend on it (up
    to float rounding). The model is put in eval mode for the call and its training flag restored.
    """
    if images.dim() != 4 or images.shape[-1] != images.shape[-2] or images.shape[-1] % 2:
        raise ValueError(f"expected images (B, C, S, S) with even S, got {tuple(images.shape)}")
    if num_probes < 1 or grid_size < 1:
        raise ValueError(f"need num_probes >= 1 and grid_size >= 1, got {num_probes}, {grid_size}")
    if cells_per_forward is not None and cells_per_forward < 1:
        raise ValueError(f"cells_per_forward must be >= 1, got {cells_per_forward}")
    device, dtype = model_device_dtype(model)
    x_hi = images.to(device=device, dtype=dtype)
    x_lo = downsample(x_hi)
    b, n = x_hi.shape[0], grid_size
    ts = grid_timesteps(n, schedule.num_steps)
    gamma = gamma_snr(schedule, ts)
    e64, e32 = np.zeros((n, n)), np.zeros((n, n))
    todo = [(i, j) for i in range(n) for j in range(n)]
    measure = cells_per_forward is None and device.type == "cuda"
    if cells_per_forward is None and not measure:
        cells_per_forward = max(1, CPU_PIXELS_PER_FORWARD // (b * x_hi.shape[-1] ** 2))
    tangents = _tangent_function(model)
    with (
        tqdm(total=n * n, desc="heatmap", unit="cell", disable=not progress) as bar,
        inference_context(model),
    ):
        while todo:
            if measure:
                chunk = todo[:1]
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            else:
                chunk = todo[:cells_per_forward]
            est_hi, est_lo = _chunk_estimates(model, schedule, x_hi, x_lo, ts, chunk, seed,
                                              num_probes, tangents)
            if measure:
                peak = torch.cuda.max_memory_allocated(device) - base
                cells_per_forward = _cuda_cells_per_forward(device, peak)
                log.info("heatmap: one cell peaked at %.2f GB; %d cells per forward",
                         peak / 1e9, cells_per_forward)
                measure = False
            for (i, j), eh, el in zip(chunk, est_hi, est_lo, strict=True):
                e64[i, j] = eh * gamma[i]
                e32[i, j] = el * gamma[j]
            todo = todo[len(chunk):]
            bar.update(len(chunk))
    return Heatmap(timesteps=ts, log_snr=schedule.log_snr(torch.as_tensor(ts)).numpy(),
                   error_64=e64, error_32=e32, grid_size=n, num_probes=num_probes, seed=seed,
                   num_images=b)
