"""The two networks of the study: a single-scale Baseline UNet and the dual-scale LIFT UNet.

Both follow STUDY.md "Models" exactly at the reference settings (hidden dims [64, 128, 256, 512],
64x64 images, attention at every level with >= 128 channels): 58,3xx,xxx and 58,5xx,xxx
parameters (tests/test_models.py pins the exact counts).

Naming: the study calls LIFT's two scales "64" and "32". Here they are the *high* scale (the image
size) and the *low* scale (half of it), whatever the image size is, so the smoke model at 32x32
has a 16x16 low scale. Interfaces:

    BaselineUNet: model(x, t) -> eps                           x: (B, 3, S, S), t: (B,) int
    LiftUNet:     model(x_hi, x_lo, t_hi, t_lo) -> (eps_hi, eps_lo)
                  x_hi: (B, 3, S, S), x_lo: (B, 3, S/2, S/2)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 8  # GroupNorm(8) everywhere, as in the study


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of width `dim`: half sin, half cos, freq exp(-log(1e4) k / (half-1))."""
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(10000.0) * k / (half - 1))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class TimeMLP(nn.Module):
    """Sinusoid(width) -> Linear(width, emb) -> SiLU -> Linear(emb, emb)."""

    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.width = width
        self.mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.width))


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(GROUPS, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.shortcut(x)


class Attention(nn.Module):
    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        if ch % heads:
            raise ValueError(f"attention channels {ch} not divisible by {heads} heads")
        self.heads = heads
        self.norm = nn.GroupNorm(GROUPS, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        # (b, heads, hw, d): softmax(q k^T / sqrt(d)) v, through the fused kernel where there is one
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                             v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNetCore(nn.Module):
    """The shared UNet trunk; the time embedding is computed by the wrapping model."""

    def __init__(self, in_ch: int, out_ch: int, hidden_dims: list[int], attn_min_ch: int,
                 emb_dim: int):
        super().__init__()
        dims = list(hidden_dims)
        for d in dims:
            if d % GROUPS:
                raise ValueError(f"hidden dim {d} is not divisible by GroupNorm's {GROUPS} groups")
        self.stem = nn.Conv2d(in_ch, dims[0], 3, padding=1)
        self.down = nn.ModuleList()
        prev = dims[0]
        for d in dims:
            self.down.append(nn.ModuleDict({
                "res1": ResBlock(prev, d, emb_dim),
                "res2": ResBlock(d, d, emb_dim),
                "attn": Attention(d) if d >= attn_min_ch else nn.Identity(),
                "down": nn.Conv2d(d, d, 4, stride=2, padding=1),
            }))
            prev = d
        mid = dims[-1]
        self.mid1 = ResBlock(mid, mid, emb_dim)
        self.mid_attn = Attention(mid) if mid >= attn_min_ch else nn.Identity()
        self.mid2 = ResBlock(mid, mid, emb_dim)
        self.up = nn.ModuleList()
        for d in reversed(dims):
            self.up.append(nn.ModuleDict({
                # the up-conv keeps the incoming width; the first block maps in+skip -> out
                "up": nn.ConvTranspose2d(prev, prev, 4, stride=2, padding=1),
                "res1": ResBlock(prev + d, d, emb_dim),
                "res2": ResBlock(d, d, emb_dim),
                "attn": Attention(d) if d >= attn_min_ch else nn.Identity(),
            }))
            prev = d
        self.head = nn.Sequential(nn.GroupNorm(GROUPS, dims[0]), nn.SiLU(),
                                  nn.Conv2d(dims[0], out_ch, 3, padding=1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        skips = []
        for level in self.down:
            h = level["res1"](h, emb)
            h = level["res2"](h, emb)
            h = level["attn"](h)
            skips.append(h)
            h = level["down"](h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level in self.up:
            h = level["up"](h)
            h = torch.cat([h, skips.pop()], dim=1)
            h = level["res1"](h, emb)
            h = level["res2"](h, emb)
            h = level["attn"](h)
        return self.head(h)


def _check_size(image_size: int, hidden_dims: list[int], dual: bool) -> None:
    # every level halves the size once, and LIFT's low scale is half the image
    need = 2 ** (len(hidden_dims) + (1 if dual else 0))
    if image_size % need:
        raise ValueError(f"image_size={image_size} must be divisible by {need} for "
                         f"{len(hidden_dims)} levels{' and a half-size low scale' if dual else ''}")


class BaselineUNet(nn.Module):
    """Single-scale UNet: eps = model(x_t, t)."""

    kind = "baseline"

    def __init__(self, hidden_dims: list[int] = (64, 128, 256, 512), image_size: int = 64,
                 attn_min_ch: int = 128, channels: int = 3):
        super().__init__()
        hidden_dims = list(hidden_dims)
        _check_size(image_size, hidden_dims, dual=False)
        self.image_size, self.channels = image_size, channels
        base = hidden_dims[0]
        emb_dim = 4 * base  # 64 -> 256 at the reference size
        self.time_mlp = TimeMLP(base, emb_dim)
        self.unet = UNetCore(channels, channels, hidden_dims, attn_min_ch, emb_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, self.time_mlp(t))


class LiftUNet(nn.Module):
    """Dual-scale, dual-timestep UNet.

    Input: x_hi and bilinear-upsampled x_lo, concatenated (6 channels). Output: 6 channels; the
    first 3 are eps_hi, the last 3 are bilinearly downsampled to the low scale as eps_lo. Both
    timesteps go through the same time MLP; the two embeddings are concatenated and mixed.
    """

    kind = "lift"

    def __init__(self, hidden_dims: list[int] = (64, 128, 256, 512), image_size: int = 64,
                 attn_min_ch: int = 128, channels: int = 3):
        super().__init__()
        hidden_dims = list(hidden_dims)
        _check_size(image_size, hidden_dims, dual=True)
        self.image_size, self.channels = image_size, channels
        self.low_size = image_size // 2
        base = hidden_dims[0]
        emb_dim = 4 * base
        self.time_mlp = TimeMLP(base, emb_dim)
        self.time_mix = nn.Sequential(nn.Linear(2 * emb_dim, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        self.unet = UNetCore(2 * channels, 2 * channels, hidden_dims, attn_min_ch, emb_dim)

    def forward(self, x_hi: torch.Tensor, x_lo: torch.Tensor, t_hi: torch.Tensor,
                t_lo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.time_mix(torch.cat([self.time_mlp(t_hi), self.time_mlp(t_lo)], dim=1))
        up = F.interpolate(x_lo, size=x_hi.shape[-2:], mode="bilinear", align_corners=False)
        out = self.unet(torch.cat([x_hi, up], dim=1), emb)
        eps_hi, eps_lo_full = out[:, : self.channels], out[:, self.channels:]
        eps_lo = F.interpolate(eps_lo_full, size=x_lo.shape[-2:], mode="bilinear",
                               align_corners=False)
        return eps_hi, eps_lo


def downsample(x: torch.Tensor) -> torch.Tensor:
    """The low scale of a batch: bilinear downsample to half size (the study's clean x_32)."""
    return F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
