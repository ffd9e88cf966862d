"""Step 1 of the GPU check: do the models, the sampler and the EMA compute on the device what
they compute on the CPU?

Reference: the CPU, fp32, NCHW. Under test: the device with the harness's own settings (on a
GPU: NCHW, cuDNN's TF32 convolutions as torch leaves them on; on the CPU, where the check runs
scaled down, the NHWC layout the harness uses there). On a GPU the forward is also run with
TF32 off, so that a TF32-sized difference is told from a wrong result.

- forward: one batch through Baseline and LIFT, max |difference| and relative to max |output|;
- DDIM: 4 images, 18 steps (LIFT: the diagonal path), the same starting noise on both; the
  difference of the uint8 images in levels (max, mean, share of values that differ);
- EMA: three updates of an EMA after identical weight changes, shadows compared (bitwise?).
"""

from __future__ import annotations

import contextlib
import copy

import torch

from explore.ema import EMA
from explore.nets.diffusion import CosineSchedule
from explore.nets.sampling import diagonal_path, sample_baseline, sample_lift

from .context import Outcome

KINDS = ("baseline", "lift")
# relative forward difference (max |diff| / max |output|) within which a device agrees
FORWARD_TOL = 1e-2       # with TF32 convolutions (10-bit mantissa)
FORWARD_TOL_STRICT = 1e-4  # full fp32
DDIM_MAX_LEVELS = 8      # uint8 levels: a value that far off is more than rounding
DDIM_MEAN_LEVELS = 0.5
EMA_TOL = 1e-6           # relative: a few float32 ulps (fused multiply-add on the GPU)


@contextlib.contextmanager
def strict_fp32():
    """TF32 off for convolutions and matmuls (restored after)."""
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _inputs(kind: str, batch: int, size: int) -> tuple:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(batch, 3, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    if kind == "baseline":
        return x, t
    x_lo = torch.randn(batch, 3, size // 2, size // 2, generator=g)
    return x, x_lo, t, torch.randint(0, 1000, (batch,), generator=g)


def _outputs(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    return torch.cat([o.float().cpu().flatten() for o in out])


def _to_layout(model, inputs, device, channels_last: bool):
    model = copy.deepcopy(model).to(device)
    ins = [t.to(device) for t in inputs]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        ins = [t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
               for t in ins]
    return model, ins


def compare_forward(kind: str, plan) -> dict:
    torch.manual_seed(0)
    model = plan.size.build(kind).eval()
    inputs = _inputs(kind, plan.forward_batch, plan.size.image_size)
    ref = _outputs(model, inputs)
    nhwc = not plan.cuda  # the harness's layout on the CPU
    dev_model, dev_inputs = _to_layout(model, inputs, plan.device, nhwc)
    got = _outputs(dev_model, dev_inputs)
    scale = float(ref.abs().max())
    diff = float((got - ref).abs().max())
    out = {"batch": plan.forward_batch, "max_abs_diff": diff, "max_abs_output": scale,
           "rel_diff": diff / scale if scale else diff, "layout": "NHWC" if nhwc else "NCHW",
           "bitwise": bool(torch.equal(got, ref))}
    if plan.cuda:
        with strict_fp32():
            strict = _outputs(dev_model, dev_inputs)
        d = float((strict - ref).abs().max())
        out.update(max_abs_diff_strict_fp32=d, rel_diff_strict_fp32=d / scale if scale else d)
    return out


def compare_ddim(kind: str, plan) -> dict:
    torch.manual_seed(0)
    model = plan.size.build(kind).eval()
    schedule = CosineSchedule.named("study")
    n, steps = plan.sample_images, plan.sample_steps

    def sample(m, device, channels_last):
        common = dict(seed=0, batch_size=n, device=device, progress=False,
                      channels_last=channels_last)
        if kind == "baseline":
            return sample_baseline(m, schedule, n, num_steps=steps, **common)
        return sample_lift(m, schedule, n, diagonal_path(steps), **common)

    ref = sample(model, torch.device("cpu"), False)
    dev_model = copy.deepcopy(model).to(plan.device)
    got = sample(dev_model, plan.device, None)  # the harness's default layout on the device
    d = (got.int() - ref.int()).abs()
    return {"images": n, "steps": steps, "path": "ddim" if kind == "baseline" else "diagonal",
            "max_levels": int(d.max()), "mean_levels": float(d.float().mean()),
            "share_differing": float((d > 0).float().mean()),
            "share_over_2_levels": float((d > 2).float().mean())}


def compare_ema(plan) -> dict:
    torch.manual_seed(1)
    model = plan.size.build("lift")
    dev_model = copy.deepcopy(model).to(plan.device)
    ema_cpu, ema_dev = EMA(model, decay=0.999), EMA(dev_model, decay=0.999)
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        with torch.no_grad():
            for p, q in zip(model.parameters(), dev_model.parameters()):
                p.add_(torch.randn(p.shape, generator=g) * 1e-2)
                q.copy_(p)
        ema_cpu.update()
        ema_dev.update()
    worst, worst_rel, bitwise = 0.0, 0.0, True
    for name, a in ema_cpu.shadow.items():
        b = ema_dev.shadow[name].cpu()
        bitwise &= bool(torch.equal(a, b))
        d = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
        worst = max(worst, d)
        scale = float(a.abs().max()) if a.numel() else 0.0
        worst_rel = max(worst_rel, d / scale if scale else d)
    return {"updates": 3, "decay": 0.999, "tensors": len(ema_cpu.shadow), "bitwise": bitwise,
            "max_abs_diff": worst, "max_rel_diff": worst_rel}


def step_correctness(ctx) -> Outcome:
    plan, res = ctx.plan, ctx.result
    res["reference"] = "CPU, fp32, NCHW"
    res["under_test"] = (f"{plan.device}, fp32, harness defaults (NCHW; cuDNN TF32 "
                         f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'})" if plan.cuda
                         else "CPU, fp32, NHWC (the harness's CPU layout): a stand-in for the "
                              "GPU, which this mode does not have")
    res["model_size"] = plan.size.describe()
    per_kind = res.setdefault("models", {})
    for kind in KINDS:
        ctx.need(3, f"the {kind} forward")
        per_kind.setdefault(kind, {})["forward"] = compare_forward(kind, plan)
        ctx.done(f"{kind} forward")
        f = per_kind[kind]["forward"]
        ctx.log(f"{kind} forward: max |diff| {f['max_abs_diff']:.2e} (relative "
                f"{f['rel_diff']:.2e})")
    for kind in KINDS:
        ctx.need(5, f"the {kind} DDIM sample")
        per_kind[kind]["ddim"] = compare_ddim(kind, plan)
        ctx.done(f"{kind} DDIM")
        s = per_kind[kind]["ddim"]
        ctx.log(f"{kind} DDIM {s['images']} images: max {s['max_levels']} levels, mean "
                f"{s['mean_levels']:.3f}")
    ctx.need(2, "the EMA update")
    res["ema"] = compare_ema(plan)
    ctx.done("EMA update")
    return judge(res, plan.cuda)


def judge(res: dict, cuda: bool) -> Outcome:
    problems, parts = [], []
    fwd = max(res["models"][k]["forward"]["rel_diff"] for k in KINDS)
    fwd_abs = max(res["models"][k]["forward"]["max_abs_diff"] for k in KINDS)
    parts.append(f"forward max |diff| {fwd_abs:.1e} (relative {fwd:.1e})")
    if fwd > FORWARD_TOL:
        problems.append(f"forward differs by {fwd:.1e} relative (> {FORWARD_TOL:g})")
    if cuda:
        strict = max(res["models"][k]["forward"]["rel_diff_strict_fp32"] for k in KINDS)
        parts.append(f"TF32 off {strict:.1e}")
        if strict > FORWARD_TOL_STRICT:
            problems.append(f"forward with TF32 off differs by {strict:.1e} relative "
                            f"(> {FORWARD_TOL_STRICT:g})")
    levels = max(res["models"][k]["ddim"]["max_levels"] for k in KINDS)
    mean = max(res["models"][k]["ddim"]["mean_levels"] for k in KINDS)
    parts.append(f"DDIM 4 images max {levels} uint8 levels (mean {mean:.3f})")
    if levels > DDIM_MAX_LEVELS or mean > DDIM_MEAN_LEVELS:
        problems.append(f"DDIM images differ by up to {levels} levels (mean {mean:.2f})")
    ema = res["ema"]
    parts.append("EMA update bitwise equal" if ema["bitwise"]
                 else f"EMA update max |diff| {ema['max_abs_diff']:.1e}")
    if ema["max_rel_diff"] > EMA_TOL:
        problems.append(f"EMA update differs by {ema['max_rel_diff']:.1e} relative")
    verdict = ", ".join(parts)
    if problems:
        return "warn", f"{verdict}; outside tolerance: {'; '.join(problems)}"
    return "ok", verdict
