"""The study's LiftUNet: its forward-mode pass (jvp) written out, for the error heatmap.

This mirrors explore/nets/models.py layer by layer; explore.lift.heatmap uses it for a LiftUNet (and
`torch.func` for any other model).

torch.func's jvp of a GroupNorm under vmap costs ~15 elementwise passes per tangent (its generic
formula, batched), and SiLU's several more; on the study's UNet those dominate the heatmap on
a CPU and are a large share on a GPU. The pass below carries the primal p (N, ...) and the M
tangents T (M*N, ...) through the same layers with closed-form rules: convolutions and bilinear
resampling are linear (the tangent goes through without bias), GroupNorm's tangent is one fused
kernel (its Jacobian is symmetric, so aten's group-norm backward applied to the tangent is the
jvp), SiLU's is one multiply by a factor computed once from the primal, the time embedding has no
tangent, and attention uses the softmax rule dP = P (dS - rowsum(P dS)). The tangents of the high
probes need only eps_64 and those of the low probes only eps_32, so the last convolution computes
just those channels. It is used only for a LiftUNet whose layers are the ones it mirrors
(`fast_path_supported`), and the first chunk of every heatmap is checked against torch.func
(`CheckedTangents`): on any mismatch the heatmap falls back to the generic torch.func pass
(`explore.lift.heatmap._tangents_functorch`).

Interface: `tangents_lift_unet(model, z_hi, z_lo, t_hi, t_lo, u_hi, u_lo)` takes the noised
batches (N, ...), their timesteps (N,) and K probes per scale (K, N, ...) and returns
(J_64 u_k, J_32 u_k) as (K, N, ...) each, like the torch.func pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from explore.nets.models import Attention, LiftUNet, ResidualBlock, UNet

log = logging.getLogger(__name__)

Tangents = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def fast_path_supported(model: nn.Module) -> bool:
    """True for a models.LiftUNet whose forward and layers `tangents_lift_unet` mirrors."""
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


def tangents_lift_unet(model: nn.Module, z_hi, z_lo, t_hi, t_lo, u_hi, u_lo, *,
                       return_primal: bool = False):
    """The heatmap's tangents for a LiftUNet, with the forward-mode pass written out (see the
    module docstring): the same (J_64 u_k, J_32 u_k) as `explore.lift.heatmap._tangents_functorch`.

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


class CheckedTangents:
    """`tangents_lift_unet`, with its first call checked against the model and torch.func.

    The check: the primal outputs on the first image against the model's own forward, and the
    tangents of the first probe of both scales against `torch.func.jvp` of the model. A mismatch
    (the model's code changed and the written-out pass no longer mirrors it) logs a warning and
    makes this and every later chunk use `fallback`, the generic torch.func pass (same arguments
    and result; explore.lift.heatmap passes its `_tangents_functorch`).
    """

    def __init__(self, fallback: Tangents):
        self.fallback = fallback
        self.checked, self.ok = False, True

    def __call__(self, model, z_hi, z_lo, t_hi, t_lo, u_hi, u_lo):
        if not self.ok:
            return self.fallback(model, z_hi, z_lo, t_hi, t_lo, u_hi, u_lo)
        if self.checked:
            return tangents_lift_unet(model, z_hi, z_lo, t_hi, t_lo, u_hi, u_lo)
        jv_hi, jv_lo, primal = tangents_lift_unet(model, z_hi, z_lo, t_hi, t_lo, u_hi, u_lo,
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
                    "(was explore.nets.models changed?); using torch.func instead (slower)")
        return self.fallback(model, z_hi, z_lo, t_hi, t_lo, u_hi, u_lo)
