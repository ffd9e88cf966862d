"""The two networks of the study: a single-scale Baseline UNet and the dual-scale LIFT UNet.

Both follow STUDY.md "Models" exactly at the reference settings (hidden dims [64, 128, 256, 512],
64x64 images, attention at every level with >= 128 channels): 58,274,627 and 58,475,206
parameters, with the original study's module names (its checkpoints load by name).

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


class SinusoidalEmbedding(nn.Module):
    """Module form of `timestep_embedding` (index 0 of `time_mlp`, as in the original)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t, self.dim)


def time_mlp(width: int, emb_dim: int) -> nn.Sequential:
    """Sinusoid(width) -> Linear(width, emb) -> SiLU -> Linear(emb, emb)."""
    return nn.Sequential(SinusoidalEmbedding(width), nn.Linear(width, emb_dim), nn.SiLU(),
                         nn.Linear(emb_dim, emb_dim))


class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int):
        super().__init__()
        self.time_mlp = nn.Linear(emb_dim, out_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.norm1 = nn.GroupNorm(GROUPS, in_ch)
        self.norm2 = nn.GroupNorm(GROUPS, out_ch)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_mlp(F.silu(emb))[:, :, None, None]
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
        # qkv channels are [q | k | v], each split into heads of c/heads channels
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        # (b, heads, hw, d): softmax(q k^T / sqrt(d)) v, through the fused kernel where there is one
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                             v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


def _check_size(image_size: int, hidden_dims: list[int], dual: bool) -> None:
    # every level halves the size once, and LIFT's low scale is half the image
    need = 2 ** (len(hidden_dims) + (1 if dual else 0))
    if image_size % need:
        raise ValueError(f"image_size={image_size} must be divisible by {need} for "
                         f"{len(hidden_dims)} levels{' and a half-size low scale' if dual else ''}")
    for d in hidden_dims:
        if d % GROUPS:
            raise ValueError(f"hidden dim {d} is not divisible by GroupNorm's {GROUPS} groups")


class UNet(nn.Module):
    """The UNet trunk shared by both models; subclasses add the time embedding and the I/O.

    Attribute names (time_mlp, init_conv, encoder_blocks, downsample, bottleneck,
    decoder_blocks, upsample, final_conv) are those of the original study's modules, so that
    its state_dicts and EMA shadows load by name without conversion.
    """

    def __init__(self, in_ch: int, out_ch: int, hidden_dims: list[int], attn_min_ch: int):
        super().__init__()
        dims = list(hidden_dims)
        emb_dim = 4 * dims[0]  # 64 -> 256 at the reference size
        attn = lambda d: Attention(d) if d >= attn_min_ch else nn.Identity()  # noqa: E731
        self.time_mlp = time_mlp(dims[0], emb_dim)
        self.init_conv = nn.Conv2d(in_ch, dims[0], 3, padding=1)
        self.encoder_blocks, self.downsample = nn.ModuleList(), nn.ModuleList()
        prev = dims[0]
        for d in dims:
            self.encoder_blocks.append(nn.ModuleList([
                ResidualBlock(prev, d, emb_dim), ResidualBlock(d, d, emb_dim), attn(d)]))
            self.downsample.append(nn.Conv2d(d, d, 4, stride=2, padding=1))
            prev = d
        # the bottleneck always has attention (it is at most a few pixels wide)
        self.bottleneck = nn.ModuleList([ResidualBlock(prev, prev, emb_dim), Attention(prev),
                                         ResidualBlock(prev, prev, emb_dim)])
        self.decoder_blocks, self.upsample = nn.ModuleList(), nn.ModuleList()
        for d in reversed(dims):
            # the up-conv keeps the incoming width; the first block maps in+skip -> out
            self.upsample.append(nn.ConvTranspose2d(prev, prev, 4, stride=2, padding=1))
            self.decoder_blocks.append(nn.ModuleList([
                ResidualBlock(prev + d, d, emb_dim), ResidualBlock(d, d, emb_dim), attn(d)]))
            prev = d
        self.final_conv = nn.Sequential(nn.GroupNorm(GROUPS, dims[0]), nn.SiLU(),
                                        nn.Conv2d(dims[0], out_ch, 3, padding=1))

    def trunk(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.init_conv(x)
        skips = []
        for (res1, res2, attn), down in zip(self.encoder_blocks, self.downsample):
            h = attn(res2(res1(h, emb), emb))
            skips.append(h)
            h = down(h)
        res1, attn, res2 = self.bottleneck
        h = res2(attn(res1(h, emb)), emb)
        for (res1, res2, attn), up in zip(self.decoder_blocks, self.upsample):
            h = torch.cat([up(h), skips.pop()], dim=1)
            h = attn(res2(res1(h, emb), emb))
        return self.final_conv(h)


class BaselineUNet(UNet):
    """Single-scale UNet: eps = model(x_t, t)."""

    kind = "baseline"

    def __init__(self, hidden_dims: list[int] = (64, 128, 256, 512), image_size: int = 64,
                 attn_min_ch: int = 128, channels: int = 3):
        hidden_dims = list(hidden_dims)
        _check_size(image_size, hidden_dims, dual=False)
        super().__init__(channels, channels, hidden_dims, attn_min_ch)
        self.image_size, self.channels = image_size, channels

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.trunk(x, self.time_mlp(t))


class LiftUNet(UNet):
    """Dual-scale, dual-timestep UNet.

    Input: x_hi and bilinear-upsampled x_lo, concatenated (6 channels). Output: 6 channels; the
    first 3 are eps_hi, the last 3 are bilinearly downsampled to the low scale as eps_lo. Both
    timesteps go through the same time MLP; the two embeddings are concatenated and mixed.
    """

    kind = "lift"

    def __init__(self, hidden_dims: list[int] = (64, 128, 256, 512), image_size: int = 64,
                 attn_min_ch: int = 128, channels: int = 3):
        hidden_dims = list(hidden_dims)
        _check_size(image_size, hidden_dims, dual=True)
        super().__init__(2 * channels, 2 * channels, hidden_dims, attn_min_ch)
        self.image_size, self.channels = image_size, channels
        self.low_size = image_size // 2
        emb_dim = 4 * hidden_dims[0]
        self.time_combine = nn.Sequential(nn.Linear(2 * emb_dim, emb_dim), nn.SiLU(),
                                          nn.Linear(emb_dim, emb_dim))

    def forward(self, x_hi: torch.Tensor, x_lo: torch.Tensor, t_hi: torch.Tensor,
                t_lo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.time_combine(torch.cat([self.time_mlp(t_hi), self.time_mlp(t_lo)], dim=1))
        up = F.interpolate(x_lo, size=x_hi.shape[-2:], mode="bilinear", align_corners=False)
        out = self.trunk(torch.cat([x_hi, up], dim=1), emb)
        eps_hi, eps_lo_full = out[:, : self.channels], out[:, self.channels:]
        eps_lo = F.interpolate(eps_lo_full, size=x_lo.shape[-2:], mode="bilinear",
                               align_corners=False)
        return eps_hi, eps_lo


def downsample(x: torch.Tensor) -> torch.Tensor:
    """The low scale of a batch: bilinear downsample to half size (the study's clean x_32)."""
    return F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
