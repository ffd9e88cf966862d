"""Step 3 of the GPU check: the rates the study's cost depends on, at the reference size.

- training images/s of Baseline and LIFT at batch 64 (the harness's own optimizer step,
  bench.common.training: forward, backward, clip, AdamW, EMA) for fp32, bf16,
  bf16 + channels_last and bf16 + channels_last + torch.compile (its compile time apart: the
  warm-up steps' time beyond the steady step time); peak GPU memory of each;
- the EMA update's time as a share of a step (fp32, and of the fastest variant);
- DDIM sampling images/s at the evaluation batch (64; 18 steps = 18 model calls; LIFT on the
  diagonal path, which costs what the DP-Total path costs), fp32 as evaluation samples;
- the evaluation's other costs per row: feature extraction images/s (torch-fidelity's
  Inception-v3 network with random weights: the same computation as with the real weights,
  which the GPU machine may not have), seconds per error-heatmap cell (LIFT, 16 images, 4
  probes: eval.heatmap's defaults), seconds per FID bootstrap replicate (2048-d, 15,803 images);
- writing LIFT's resume state (every epoch) and a snapshot (every checkpoint.every epochs) from
  the device.

Measurements run cheapest-first, the compiled variants last, each only when the step's slice
has room for it; the report is rewritten after each.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from explore.nets.diffusion import CosineSchedule
from explore.nets.sampling import diagonal_path, sample_baseline, sample_lift

from ..common.timing import cuda_peak, free, measure, sync, throughput
from ..common.training import HarnessTrainer, random_batch, train_config
from .context import Outcome
from .plan import COMPILED, TRAIN_VARIANTS

UNFINISHED = {"unfinished": "started, cut off by the budget before it finished"}
KINDS = ("lift", "baseline")  # LIFT first: the bigger of the study's costs
HEATMAP_DEFAULT_IMAGES, HEATMAP_DEFAULT_PROBES = 16, 4  # conf/eval/default.yaml


def measure_train(kind: str, variant: str, plan, with_ema: bool) -> dict:
    device, b = plan.device, plan.train_batch_bench
    cfg = train_config(kind, plan.size, device, b, TRAIN_VARIANTS[variant])
    t0 = time.perf_counter()
    trainer = HarnessTrainer(cfg, device, random_batch(b, plan.size.image_size, device))
    build_s = time.perf_counter() - t0
    warm = []
    for _ in range(max(1, plan.train_warmup + (2 if variant == COMPILED else 0))):
        sync(device)
        t0 = time.perf_counter()
        trainer.step()
        sync(device)
        warm.append(time.perf_counter() - t0)
    st = measure({"step": trainer.step}, plan.train_reps, 0, device)["step"]
    out = {**st, "images_per_s": throughput(st, b), "batch": b, "build_s": round(build_s, 3),
           "warmup_s": [round(x, 4) for x in warm],
           "memory": cuda_peak(trainer.step, device)}
    if variant == COMPILED:
        out["compile_s"] = max(0.0, sum(warm) - len(warm) * st["median_s"])
    if with_ema and trainer.ema is not None:
        ema = measure({"ema": trainer.ema.update}, plan.train_reps, 1, device)["ema"]
        out["ema_update"] = ema
        out["ema_share_percent"] = 100.0 * ema["median_s"] / st["median_s"]
    del trainer
    if variant == COMPILED:
        torch._dynamo.reset()
    free(device)
    return out


def measure_sampling(kind: str, plan) -> dict:
    device, n, steps = plan.device, plan.sampling_batch, 18
    torch.manual_seed(0)
    model = plan.size.build(kind).to(device).eval()
    schedule = CosineSchedule.named("study")

    def sample(k: int):
        common = dict(seed=0, batch_size=n, device=device, progress=False)
        if kind == "baseline":
            return sample_baseline(model, schedule, n, num_steps=k, **common)
        return sample_lift(model, schedule, n, diagonal_path(k), **common)

    st = measure({"s": lambda: sample(steps)}, plan.sampling_reps, 1, device,
                 warmups={"s": lambda: sample(1)})["s"]
    out = {**st, "images_per_s": throughput(st, n), "batch": n, "steps": steps,
           "model_calls": steps, "precision": "fp32 (as explore.evaluate samples)",
           "memory": cuda_peak(lambda: sample(steps), device)}
    return out


def inception_network(device) -> torch.nn.Module:
    """torch-fidelity's Inception-v3 feature network (the 2048-d pool features) with random
    weights: the FID extractor's computation, without its weights file."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class RandomWeights(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # keep the random initialisation

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        net = RandomWeights("inception-v3-compat", ["2048"],
                            feature_extractor_weights_path=str(empty))
    return net.to(device).eval()


def measure_features(plan) -> dict:
    device, n, b = plan.device, plan.feature_images, plan.feature_batch
    net = inception_network(device)
    s = plan.size.image_size
    images = torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(device)

    def run():
        with torch.no_grad():
            for i in range(0, n, b):
                net(images[i:i + b])

    st = measure({"s": run}, 2, 1, device)["s"]
    out = {**st, "images_per_s": throughput(st, n), "images": n, "batch": b,
           "network": "torch-fidelity Inception-v3 (2048-d pool), random weights, input "
                      f"{s} px resized to 299",
           "memory": cuda_peak(run, device)}
    return out


def measure_heatmap(plan) -> dict:
    from explore.lift.heatmap import error_heatmap

    device, g, b, k = plan.device, plan.heatmap_grid, plan.heatmap_batch, plan.heatmap_probes
    torch.manual_seed(0)
    model = plan.size.build("lift").to(device).eval()
    schedule = CosineSchedule.named("study")
    images = random_batch(b, plan.size.image_size, device)

    def run(grid):
        return error_heatmap(model, schedule, images, grid_size=grid, num_probes=k,
                             progress=False)

    st = measure({"s": lambda: run(g)}, 1, 1, device, warmups={"s": lambda: run(1)})["s"]
    per_cell = st["median_s"] / (g * g)
    scale = (HEATMAP_DEFAULT_IMAGES * HEATMAP_DEFAULT_PROBES) / (b * k)
    out = {**st, "grid": g, "cells": g * g, "images": b, "probes": k,
           "per_cell_s": per_cell, "per_cell_default_s": per_cell * scale,
           "scaled_to_default": scale != 1,
           "memory": cuda_peak(lambda: run(1), device)}
    return out


def measure_bootstrap(plan) -> dict:
    from explore.evaluation.metrics import FidBootstrap, bootstrap_indices

    device, d, n, reps = plan.device, plan.bootstrap_dim, plan.bootstrap_images, \
        plan.bootstrap_reps
    g = torch.Generator().manual_seed(0)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    stats = {"mu": np.zeros(d), "sigma": (a @ a.T + 1e-3 * torch.eye(d, dtype=torch.float64))
             .numpy()}
    t0 = time.perf_counter()
    boot = FidBootstrap(stats, device=device)
    sync(device)
    setup = time.perf_counter() - t0
    fake = torch.randn(n, d, generator=g, dtype=torch.float64)
    idx = bootstrap_indices(n, reps, 0, 42)
    boot.replicates(fake, idx[:1])  # warm-up
    sync(device)
    t0 = time.perf_counter()
    boot.replicates(fake, idx)
    sync(device)
    per = (time.perf_counter() - t0) / reps
    free(device)
    return {"dim": d, "images": n, "replicates_timed": reps, "per_replicate_s": per,
            "setup_s": setup}


def measure_checkpoint_writes(plan, folder: Path) -> dict:
    """Seconds to write LIFT's resume state (weights, EMA, AdamW's two moments: what
    checkpoints/last.pt holds, every epoch) and a snapshot (weights and EMA, every
    checkpoint.every epochs), from the device, with the harness's atomic write (fsync,
    rename)."""
    from explore.run.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = plan.size.build("lift").to(plan.device)
    weights = model.state_dict()
    clone = lambda: {k: v.detach().clone() for k, v in weights.items()}  # noqa: E731
    ema = {"decay": 0.9999, "shadow": clone()}
    moments = {i: {"step": torch.tensor(1.0), "exp_avg": p.detach().clone(),
                   "exp_avg_sq": p.detach().clone()} for i, p in enumerate(model.parameters())}
    resume = {"model_state": weights, "ema_state": ema, "optimizer": {"state": moments}}
    snapshot = {"model_state": weights, "ema_state": ema}
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    try:
        for name, state in (("resume", resume), ("snapshot", snapshot)):
            path = folder / f"{name}.pt"
            sync(plan.device)
            t0 = time.perf_counter()
            save_checkpoint(state, path)
            out[f"{name}_write_s"] = time.perf_counter() - t0
            out[f"{name}_bytes"] = path.stat().st_size
            path.unlink()
    finally:
        for leftover in folder.glob("*.pt"):
            leftover.unlink()
    out["folder"] = str(folder)
    return out


def step_throughput(ctx) -> Outcome:
    plan, res = ctx.plan, ctx.result
    res["config"] = {"model_size": plan.size.describe(), "train_batch": plan.train_batch_bench,
                     "train_warmup": plan.train_warmup, "train_reps": plan.train_reps,
                     "sampling_batch": plan.sampling_batch, "variants": TRAIN_VARIANTS,
                     "harness": "bench.common.training (explore.training.step.train_step + "
                                "EMA 0.9999), conf/train.yaml defaults plus the variant"}
    train = res.setdefault("train", {k: {} for k in KINDS})
    ctx.summarize = lambda: (_ema_shares(res), judge(res)[1])[1]
    for kind in KINDS:
        for v in plan.variants:
            if v == COMPILED:
                continue
            ctx.need(8 if plan.cuda else 3, f"training {kind} {v}")
            train[kind][v] = dict(UNFINISHED)
            train[kind][v] = _guarded(lambda k=kind, v=v: measure_train(k, v, plan, v == "fp32"),
                                       plan.device)
            _say(ctx, f"train {kind} {v}", train[kind][v])
            ctx.done(f"train {kind} {v}")
    sampling = res.setdefault("sampling", {})
    for kind in KINDS:
        ctx.need(6 if plan.cuda else 3, f"sampling {kind}")
        sampling[kind] = dict(UNFINISHED)
        sampling[kind] = _guarded(lambda k=kind: measure_sampling(k, plan), plan.device)
        _say(ctx, f"sampling {kind}", sampling[kind])
        ctx.done(f"sampling {kind}")
    extras = res.setdefault("evaluation", {})
    for name, fn in (("features", measure_features), ("heatmap", measure_heatmap),
                     ("bootstrap", measure_bootstrap),
                     ("checkpoint_writes", lambda p: measure_checkpoint_writes(
                         p, ctx.out / "work" / "checkpoint-writes"))):
        ctx.need(6 if plan.cuda else 3, f"the evaluation's {name}")
        extras[name] = dict(UNFINISHED)
        extras[name] = _guarded(lambda f=fn: f(plan), plan.device)
        ctx.log(f"{name}: {_extra(name, extras[name])}")
        ctx.done(name)
    for kind in KINDS:
        if COMPILED in plan.skipped_variants:
            train[kind][COMPILED] = {"skipped": plan.skipped_variants[COMPILED]}
            continue
        ctx.need(45, f"torch.compile of {kind} (compiling takes tens of seconds)")
        ctx.log(f"train {kind} {COMPILED}: compiling ...")
        train[kind][COMPILED] = dict(UNFINISHED)
        ctx.save()
        train[kind][COMPILED] = _guarded(lambda k=kind: measure_train(k, COMPILED, plan, False),
                                          plan.device)
        _say(ctx, f"train {kind} {COMPILED}", train[kind][COMPILED])
        ctx.done(f"train {kind} compiled")
    _ema_shares(res)
    return judge(res)


def _guarded(fn, device) -> dict:
    """A measurement that fails (an option the platform lacks, out of memory) records its error
    and the step goes on; the device's cached memory is returned after each."""
    try:
        return fn()
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        return {"error": f"{type(e).__name__}: {first}"}
    finally:
        free(device)


def _say(ctx, what: str, r: dict) -> None:
    if "error" in r:
        ctx.log(f"{what}: error: {r['error']}")
        return
    mem = r.get("memory") or {}
    peak = f", peak {mem['peak_bytes'] / 2**30:.2f} GiB" if mem.get("peak_bytes") else ""
    comp = f", compile {r['compile_s']:.0f} s" if "compile_s" in r else ""
    ctx.log(f"{what}: {r['images_per_s']['median']:.1f} img/s{peak}{comp}")


def _extra(name: str, r: dict) -> str:
    if "error" in r:
        return f"error: {r['error']}"
    if name == "features":
        return f"{r['images_per_s']['median']:.1f} img/s"
    if name == "heatmap":
        return f"{r['per_cell_s']:.3g} s per cell ({r['images']} images, {r['probes']} probes)"
    if name == "checkpoint_writes":
        return (f"resume state {r['resume_bytes'] / 1e6:.0f} MB in {r['resume_write_s']:.2f} s, "
                f"snapshot {r['snapshot_bytes'] / 1e6:.0f} MB in {r['snapshot_write_s']:.2f} s")
    return f"{r['per_replicate_s']:.3g} s per replicate ({r['dim']}-d, {r['images']} images)"


def fastest_variant(train_kind: dict) -> str | None:
    """The measured training variant with the most images/s."""
    rates = {v: r["images_per_s"]["median"] for v, r in train_kind.items()
             if isinstance(r, dict) and "images_per_s" in r}
    return max(rates, key=rates.get) if rates else None


def _ema_shares(res: dict) -> None:
    for kind, variants in res.get("train", {}).items():
        fp32 = variants.get("fp32", {})
        best = fastest_variant(variants)
        if "ema_update" in fp32 and best:
            ema_s = fp32["ema_update"]["median_s"]
            res.setdefault("ema_share", {})[kind] = {
                "ema_update_s": ema_s,
                "fp32_percent": fp32["ema_share_percent"],
                "fastest_variant": best,
                "fastest_percent": 100.0 * ema_s / variants[best]["median_s"]}


def judge(res: dict) -> Outcome:
    parts, errors = [], []
    for kind in KINDS:
        variants = res.get("train", {}).get(kind, {})
        rates = []
        for v in TRAIN_VARIANTS:
            r = variants.get(v, {})
            if "images_per_s" in r:
                rates.append(f"{v} {r['images_per_s']['median']:.0f}")
            elif "error" in r:
                errors.append(f"train {kind} {v}: {r['error']}")
            elif "unfinished" in r:
                rates.append(f"{v} unfinished")
        if rates:
            parts.append(f"train {kind} img/s: {', '.join(rates)}")
    for kind in KINDS:
        r = res.get("sampling", {}).get(kind, {})
        if "images_per_s" in r:
            parts.append(f"sampling {kind} {r['images_per_s']['median']:.1f} img/s")
        elif "error" in r:
            errors.append(f"sampling {kind}: {r['error']}")
    for name, r in res.get("evaluation", {}).items():
        if "error" in r:
            errors.append(f"{name}: {r['error']}")
    shares = res.get("ema_share", {})
    if shares:
        parts.append("EMA " + ", ".join(f"{k} {s['fp32_percent']:.1f}% of an fp32 step"
                                        for k, s in shares.items()))
    train = res.get("train", {})
    compile_s = [train[k][COMPILED]["compile_s"] for k in KINDS
                 if "compile_s" in train.get(k, {}).get(COMPILED, {})]
    if compile_s:
        parts.append(f"compile {', '.join(f'{c:.0f} s' for c in compile_s)}")
    verdict = "; ".join(parts) or "nothing measured"
    if errors:
        return "warn", f"{verdict}; errors: {'; '.join(errors)}"
    return "ok", verdict
