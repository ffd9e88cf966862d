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
on the chunking, the device or the order in which cells are computed.
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
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .diffusion import CosineSchedule
from .files import atomic_write
from .models import downsample
from .paths import grid_timesteps

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
# pieces shared with explore.naive.naive_error_heatmap
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


# ------------------------------------------------------------------------------------------------
# the study's LiftUNet: its forward-mode pass written out
# ------------------------------------------------------------------------------------------------
#
# torch.func's jvp of a GroupNorm under vmap costs ~15 elementwise passes per tangent (its generic
# formula, batched), and SiLU's several more; on the study's UNet those dominate the heatmap on
# a CPU and are a large share on a GPU. The pass below carries the primal p (N, ...) and the M
# tangents T (M*N, ...) through the same layers with closed-form rules: convolutions and bilinear
# resampling are linear (the tangent goes through without bias), GroupNorm's tangent is one fused
# kernel (its Jacobian is symmetric, so aten's group-norm backward applied to the tangent is the
# jvp), SiLU's is one multiply by a factor computed once from the primal, the time embedding has no
# tangent, and attention uses the softmax rule dP = P (dS - rowsum(P dS)). The tangents of the high
# probes need only eps_64 and those of the low probes only eps_32, so the last convolution computes
# just those channels. It is used only for a LiftUNet whose layers are the ones it mirrors, and the
# first chunk of every heatmap is checked against torch.func (`_checked`): on any mismatch the
# heatmap falls back to `_tangents_functorch`.


def _fast_path_supported(model: nn.Module) -> bool:
    """True for a models.LiftUNet whose forward and layers `_tangents_lift_unet` mirrors."""
    from .models import Attention, LiftUNet, ResidualBlock, UNet

    if type(model).forward is not LiftUNet.forward or type(model).trunk is not UNet.trunk:
        return False
    if not isinstance(model, LiftUNet):
        return False

    def conv(m, kind=nn.Conv2d) -> bool:
        return type(m) is kind and m.padding_mode == "zeros" and m.bias is not None

    def norm(m) -> bool:
        return type(m) is nn.GroupNorm and m.affine

    def res(m) -> bool:
        return (type(m) is ResidualBlock and norm(m.norm1) and norm(m.norm2) and conv(m.conv1)
                and conv(m.conv2) and (type(m.shortcut) is nn.Identity or conv(m.shortcut)))

    def attn(m, optional=True) -> bool:
        if optional and type(m) is nn.Identity:
            return True
        return (type(m) is Attention and norm(m.norm) and conv(m.qkv) and conv(m.proj)
                and m.qkv.kernel_size == (1, 1) and m.proj.kernel_size == (1, 1))

    def level(blocks) -> bool:
        return len(blocks) == 3 and res(blocks[0]) and res(blocks[1]) and attn(blocks[2])

    fc = model.final_conv
    return (conv(model.init_conv)
            and all(level(b) for b in model.encoder_blocks)
            and all(conv(d) for d in model.downsample)
            and len(model.bottleneck) == 3 and res(model.bottleneck[0])
            and attn(model.bottleneck[1], optional=False) and res(model.bottleneck[2])
            and all(level(b) for b in model.decoder_blocks)
            and all(conv(u, nn.ConvTranspose2d) for u in model.upsample)
            and len(fc) == 3 and norm(fc[0]) and type(fc[1]) is nn.SiLU and conv(fc[2]))


def _conv_tangent(m: nn.Module, x: torch.Tensor, weight: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """The linear part of a convolution module (no bias), optionally with a slice of its weight."""
    w = m.weight if weight is None else weight
    if isinstance(m, nn.ConvTranspose2d):
        return F.conv_transpose2d(x, w, None, m.stride, m.padding, m.output_padding, m.groups,
                                  m.dilation)
    return F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)


def _conv(m: nn.Module, p: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return m(p), _conv_tangent(m, t)


def _group_norm(m: nn.GroupNorm, p: torch.Tensor, t: torch.Tensor, silu: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm (then SiLU if `silu`) of the primal and its M tangents."""
    n, c = p.shape[:2]
    hw = p[0, 0].numel()
    groups, reps = m.num_groups, t.shape[0] // n
    p = p.contiguous()
    y, mean, rstd = torch.ops.aten.native_group_norm(p, m.weight, m.bias, n, c, hw, groups, m.eps)
    # d xhat = J dx with J = rstd (I - 11'/L - xhat xhat'/L) per group: symmetric, so the
    # backward kernel (J' g) applied to the tangent gives the tangent
    dt = torch.ops.aten.native_group_norm_backward(
        t.contiguous(), p.repeat(reps, 1, 1, 1), mean.repeat(reps, 1), rstd.repeat(reps, 1), None,
        n * reps, c, hw, groups, [True, False, False])[0]
    factor = m.weight.view(c, *([1] * (p.dim() - 2)))
    if silu:
        s = torch.sigmoid(y)
        factor = factor * s * (1 + y * (1 - s))  # d silu(y) = s (1 + y (1 - s)) dy
        y = F.silu(y)
    dt.view(reps, *p.shape).mul_(factor)
    return y, dt


def _residual_block(m: nn.Module, p: torch.Tensor, t: torch.Tensor, emb: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    hp, ht = _conv(m.conv1, *_group_norm(m.norm1, p, t, silu=True))
    hp = hp + m.time_mlp(F.silu(emb))[:, :, None, None]  # no tangent: t does not depend on x
    hp, ht = _conv(m.conv2, *_group_norm(m.norm2, hp, ht, silu=True))
    if isinstance(m.shortcut, nn.Identity):
        return hp + p, ht.add_(t)
    sp, st = _conv(m.shortcut, p, t)
    return hp + sp, ht.add_(st)


def _attention(m: nn.Module, p: torch.Tensor, t: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention block: softmax(q k'/sqrt(d)) v per head, and its tangents."""
    if isinstance(m, nn.Identity):
        return p, t
    b, c, h, w = p.shape
    reps, heads = t.shape[0] // b, m.heads
    d, hw = c // heads, h * w
    qkv_p, qkv_t = _conv(m.qkv, *_group_norm(m.norm, p, t, silu=False))
    q, k, v = qkv_p.reshape(b, 3, heads, d, hw).transpose(-1, -2).unbind(1)  # (b, heads, hw, d)
    # tangents as (b, heads, M, hw, d): the M directions share each head's primal matrices
    dq, dk, dv = qkv_t.reshape(reps, b, 3, heads, d, hw).permute(2, 1, 3, 0, 5, 4).unbind(0)
    scale = 1.0 / math.sqrt(d)
    prob = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)  # (b, heads, hw, hw)
    out_p = prob @ v
    # dS = (dq k' + q dk') scale, laid out (b, heads, M, hw_q, hw_k)
    ds = (dq.reshape(b, heads, reps * hw, d) @ k.transpose(-1, -2)).view(b, heads, reps, hw, hw)
    ds += (dk.reshape(b, heads, reps * hw, d) @ q.transpose(-1, -2)).view(
        b, heads, reps, hw, hw).transpose(-1, -2)
    ds *= scale
    pb = prob.unsqueeze(2)
    ds -= (pb * ds).sum(-1, keepdim=True)
    ds *= pb  # dP = P (dS - rowsum(P dS))
    out_t = (ds.view(b, heads, reps * hw, hw) @ v).view(b, heads, reps, hw, d)
    # P dv for every direction at once: dv as (b, heads, hw_k, M*d)
    pdv = prob @ dv.permute(0, 1, 3, 2, 4).reshape(b, heads, hw, reps * d)
    out_t += pdv.view(b, heads, hw, reps, d).transpose(2, 3)
    out_p = out_p.transpose(-1, -2).reshape(b, c, h, w)
    out_t = out_t.permute(2, 0, 1, 4, 3).reshape(reps * b, c, h, w)
    pp, pt = _conv(m.proj, out_p, out_t)
    return p + pp, pt.add_(t)


def _tangents_lift_unet(model: nn.Module, z_hi, z_lo, t_hi, t_lo, u_hi, u_lo, *,
                        return_primal: bool = False):
    """`_tangents_functorch` for a LiftUNet, with the forward-mode pass written out (see above).

    With return_primal, also the primal outputs (eps_hi, eps_lo).
    """
    k, n = u_hi.shape[:2]
    c = model.channels
    size_hi, size_lo = z_hi.shape[-2:], z_lo.shape[-2:]

    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=size_hi, mode="bilinear", align_corners=False)

    emb = model.time_combine(torch.cat([model.time_mlp(t_hi), model.time_mlp(t_lo)], dim=1))
    p = model.init_conv(torch.cat([z_hi, up(z_lo)], dim=1))
    # the input tangent is (u, 0) or (0, up(u)): each half meets only its half of the weight
    w = model.init_conv.weight
    t = torch.cat([_conv_tangent(model.init_conv, u_hi.flatten(0, 1), w[:, :c]),
                   _conv_tangent(model.init_conv, up(u_lo.flatten(0, 1)), w[:, c:])])
    skips = []
    for (res1, res2, attn), down in zip(model.encoder_blocks, model.downsample):
        p, t = _attention(attn, *_residual_block(res2, *_residual_block(res1, p, t, emb), emb))
        skips.append((p, t))
        p, t = _conv(down, p, t)
    res1, attn, res2 = model.bottleneck
    p, t = _residual_block(res2, *_attention(attn, *_residual_block(res1, p, t, emb)), emb)
    for (res1, res2, attn), upconv in zip(model.decoder_blocks, model.upsample):
        sp, st = skips.pop()
        p, t = _conv(upconv, p, t)
        p, t = torch.cat([p, sp], dim=1), torch.cat([t, st], dim=1)
        p, t = _attention(attn, *_residual_block(res2, *_residual_block(res1, p, t, emb), emb))
    norm, _, last = model.final_conv
    p, t = _group_norm(norm, p, t, silu=True)
    t_hi_part, t_lo_part = t.split(k * n)
    jv_hi = _conv_tangent(last, t_hi_part, last.weight[:c])
    jv_lo = F.interpolate(_conv_tangent(last, t_lo_part, last.weight[c:]), size=size_lo,
                          mode="bilinear", align_corners=False)
    jv_hi, jv_lo = jv_hi.view(k, n, *jv_hi.shape[1:]), jv_lo.view(k, n, *jv_lo.shape[1:])
    if not return_primal:
        return jv_hi, jv_lo
    out = last(p)
    eps_lo = F.interpolate(out[:, c:], size=size_lo, mode="bilinear", align_corners=False)
    return jv_hi, jv_lo, (out[:, :c], eps_lo)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float rounding of a different summation order, relative to b's scale."""
    tol = 16 * math.sqrt(torch.finfo(b.dtype).eps)  # 5.5e-3 for float32
    return bool((a - b).abs().max() <= tol * b.abs().max().clamp_min(1e-30))


class _CheckedTangents:
    """`_tangents_lift_unet`, with its first call checked against the model and torch.func.

    The check: the primal outputs on the first image against the model's own forward, and the
    tangents of the first probe of both scales against `torch.func.jvp` of the model. A mismatch
    (the model's code changed and the written-out pass no longer mirrors it) logs a warning and
    makes this and every later chunk use `_tangents_functorch`.
    """

    def __init__(self):
        self.checked, self.ok = False, True

    def __call__(self, model, z_hi, z_lo, t_hi, t_lo, u_hi, u_lo):
        if not self.ok:
            return _tangents_functorch(model, z_hi, z_lo, t_hi, t_lo, u_hi, u_lo)
        if self.checked:
            return _tangents_lift_unet(model, z_hi, z_lo, t_hi, t_lo, u_hi, u_lo)
        jv_hi, jv_lo, primal = _tangents_lift_unet(model, z_hi, z_lo, t_hi, t_lo, u_hi, u_lo,
                                                   return_primal=True)
        args = (z_hi[:1], z_lo[:1], t_hi[:1], t_lo[:1])

        def f(a, b):
            return model(a, b, *args[2:])

        ref = f(*args[:2])
        ref_hi = torch.func.jvp(f, args[:2], (u_hi[0, :1], torch.zeros_like(args[1])))[1][0]
        ref_lo = torch.func.jvp(f, args[:2], (torch.zeros_like(args[0]), u_lo[0, :1]))[1][1]
        self.checked = True
        self.ok = (_close(primal[0][:1], ref[0]) and _close(primal[1][:1], ref[1])
                   and _close(jv_hi[0, :1], ref_hi) and _close(jv_lo[0, :1], ref_lo))
        if self.ok:
            return jv_hi, jv_lo
        log.warning("heatmap: the written-out forward-mode pass does not match this LiftUNet "
                    "(was explore.models changed?); using torch.func instead (slower)")
        return _tangents_functorch(model, z_hi, z_lo, t_hi, t_lo, u_hi, u_lo)


def _tangent_function(model: nn.Module):
    """The fastest correct way to get a chunk's tangents for this model."""
    return _CheckedTangents() if _fast_path_supported(model) else _tangents_functorch


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


# ------------------------------------------------------------------------------------------------
# figure
# ------------------------------------------------------------------------------------------------


def plot_heatmap(heatmap: Heatmap, paths: dict[str, list[tuple[float, float]]],
                 out_png: str | os.PathLike, *, title: str | None = None) -> None:
    """Two panels, error_64 and error_total on a log colour scale, with the paths drawn on both.

    x axis: the high ("64") scale's grid timestep (index i), y axis: the low ("32") scale's (j);
    (0, 0), the noisiest cell, is at the bottom left. A path is a list of (i, j) grid indices
    (fractional indices are fine, see `explore.paths.fractional_grid_index`). The PNG is written
    atomically. Uses the Agg canvas directly, so no pyplot state or display is involved.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure

    n = heatmap.grid_size
    fig = Figure(figsize=(13, 6))
    FigureCanvasAgg(fig)
    ticks = np.unique(np.linspace(0, n - 1, min(n, 8)).round().astype(int))
    panels = [(heatmap.error_64, "64 (high) scale error"),
              (heatmap.error_total, "total error (64 + 32)")]
    for col, (err, name) in enumerate(panels):
        ax = fig.add_subplot(1, 2, col + 1)
        err = np.asarray(err, dtype=np.float64)
        positive = err[np.isfinite(err) & (err > 0)]
        if positive.size:
            norm = LogNorm(vmin=positive.min(), vmax=positive.max())
            shown = np.where(err > 0, err, np.nan)  # log scale: non-positive cells left blank
        else:
            norm, shown = Normalize(), err
        im = ax.imshow(shown.T, origin="lower", norm=norm, cmap="viridis", aspect="equal",
                       extent=(-0.5, n - 0.5, -0.5, n - 0.5), interpolation="nearest")
        fig.colorbar(im, ax=ax, label="error (log scale)" if positive.size else "error")
        for label, path in paths.items():
            xs = [p[0] for p in path]
            ys = [p[1] for p in path]
            ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.5, label=label)
        ax.set_xticks(ticks, [str(int(heatmap.timesteps[t])) for t in ticks])
        ax.set_yticks(ticks, [str(int(heatmap.timesteps[t])) for t in ticks])
        ax.set_xlabel("t_64 (high scale timestep)")
        ax.set_ylabel("t_32 (low scale timestep)")
        ax.set_title(name)
    if paths:  # one legend under both panels: paths cover the upper-left and lower-right corners
        handles, labels = fig.axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(paths), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07 if paths else 0, 1, 0.95 if title else 1))
    atomic_write(out_png, lambda f: fig.savefig(f, format="png", dpi=110))
