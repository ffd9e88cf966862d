"""Benchmarks of the harness's hot paths against straightforward versions, in one process.

    python -m explore.bench                  # full: the reference model size (minutes on a CPU)
    python -m explore.bench --quick          # seconds: CI smoke test and laptops
    python -m explore.bench --device cuda:0 --out bench.json
    python -m explore.bench --only ema,dp --threads 1

Each measurement times the harness and the naive version of the same computation (explore.naive:
written as the original study wrote it) on the same machine, in the same process, interleaved
(ABBA order, so that drift and load spikes from other processes hit both alike), and reports the
median of several repetitions after warm-up, with min and max, and their ratio:

- ema: one EMA update of the LIFT model (`explore.ema.EMA.update` vs a per-parameter update that
  allocates new tensors), and the update's share of one full training step;
- train: training-step throughput of Baseline and LIFT, harness defaults (explore.train.train_step
  + EMA) vs a plain fp32 loop, and each speed option of the training config (trainer.precision=bf16,
  trainer.channels_last, optim.optimizer.fused, trainer.compile) against the harness defaults;
- heatmap: the error heatmap (explore.heatmap) vs the per-cell, per-scale, per-probe jvp loop;
- dp: the DP path (explore.dp_path) vs four nested loops, and whether path and cost are identical;
- sampling: 18-step DDIM throughput of both models (explore.sampling vs a per-step loop).

A ratio is always "how many times faster the harness is": naive time / harness time, or harness
images/s / naive images/s. Output: a Markdown table on the terminal and, with --out, JSON with the
machine, torch version, device, every figure and every ratio (`run_bench` returns the same dict).

On a CPU the full preset scales what would take hours down, and says so in each row: the training
batch is small, the heatmap is measured on a smaller model and grid (plus one grid cell at the
reference size), and torch.compile is skipped unless --compile is given (compiling the UNet on a
CPU takes minutes and is not what a CPU run would use).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

SCHEMA = "explore-bench-v1"
SECTIONS = ("train", "ema", "heatmap", "dp", "sampling")
KINDS = ("baseline", "lift")
REFERENCE = (64, 128, 256, 512)
# trainer options measured against the harness defaults (config overrides, as on the command line)
TRAIN_OPTIONS: dict[str, list[str]] = {
    "bf16": ["trainer.precision=bf16"],
    "channels_last": ["trainer.channels_last=true"],
    "fused_adamw": ["optim.optimizer.fused=true"],
    "compile": ["trainer.compile=true"],
    "bf16_channels_last_fused_compile": ["trainer.precision=bf16", "trainer.channels_last=true",
                                         "optim.optimizer.fused=true", "trainer.compile=true"],
}
EMA_DECAY = 0.9999


@dataclass
class ModelSize:
    """A UNet size: hidden dims, image size (the high scale), attention from this many channels."""

    hidden_dims: tuple[int, ...] = REFERENCE
    image_size: int = 64
    attn_min_ch: int = 128

    def overrides(self) -> list[str]:
        dims = ",".join(str(d) for d in self.hidden_dims)
        return [f"model.hidden_dims=[{dims}]", f"model.image_size={self.image_size}",
                f"model.attn_min_ch={self.attn_min_ch}"]

    def build(self, kind: str) -> torch.nn.Module:
        from .models import BaselineUNet, LiftUNet

        cls = BaselineUNet if kind == "baseline" else LiftUNet
        return cls(hidden_dims=list(self.hidden_dims), image_size=self.image_size,
                   attn_min_ch=self.attn_min_ch)

    def describe(self) -> str:
        dims = "x".join(str(d) for d in self.hidden_dims)
        ref = " (reference)" if self == ModelSize() else ""
        return f"dims {dims}, {self.image_size}px{ref}"


@dataclass
class BenchConfig:
    """What the bench measures; `preset_config` makes the full and quick presets."""

    preset: str = "full"
    device: str = "cpu"
    threads: int = 1
    sections: tuple[str, ...] = SECTIONS
    reps: int = 5                   # timed repetitions (median, min, max) of the fast sections
    warmup: int = 2
    ema_size: ModelSize = field(default_factory=ModelSize)
    train_size: ModelSize = field(default_factory=ModelSize)
    train_batch: int = 4
    train_reps: int = 3
    train_warmup: int = 1
    train_options: tuple[str, ...] = ("bf16", "channels_last", "fused_adamw")
    skipped_options: dict[str, str] = field(default_factory=dict)  # option -> why not measured
    heatmap_size: ModelSize = field(default_factory=ModelSize)
    heatmap_grid: int = 30
    heatmap_probes: int = 4
    heatmap_batch: int = 16
    heatmap_reps: int = 1
    # one more heatmap measurement at another size (e.g. one cell of the reference model on a
    # CPU); None: none
    heatmap_extra: dict | None = None
    dp_grid: int = 30
    dp_steps: int = 18
    dp_max_jump: int = 5
    sample_size: ModelSize = field(default_factory=ModelSize)
    sample_images: int = 64
    sample_steps: int = 18
    sample_reps: int = 3
    notes: list[str] = field(default_factory=list)


def preset_config(quick: bool, device: torch.device, threads: int,
                  compile_on_cpu: bool = False) -> BenchConfig:
    """The full (reference size) or quick preset for a device."""
    cpu = device.type != "cuda"
    smoke = ModelSize((16, 32), 32, 64)  # conf/experiment/smoke.yaml's model
    cfg = BenchConfig(preset="quick" if quick else "full", device=str(device), threads=threads)
    options = ["bf16", "channels_last", "fused_adamw"]
    skipped = {}
    if cpu and not compile_on_cpu:
        skipped["compile"] = ("skipped on the CPU (compiling the UNet takes minutes there; "
                              "--compile measures it)")
        skipped["bf16_channels_last_fused_compile"] = "GPU only (includes torch.compile)"
    else:
        options += ["compile", "bf16_channels_last_fused_compile"]
    if quick:
        cfg = replace(cfg, reps=3, warmup=1, ema_size=ModelSize((32, 64, 128), 32, 128),
                      train_size=smoke, train_batch=8, train_reps=3, train_warmup=1,
                      heatmap_size=smoke, heatmap_grid=2, heatmap_batch=4, heatmap_reps=2,
                      sample_size=smoke, sample_images=4, sample_reps=2)
        cfg.notes.append("--quick: small models and configurations, a smoke test of the bench; "
                         "the full preset gives the figures that count")
    elif cpu:
        cfg = replace(cfg, reps=7, warmup=2, train_batch=4, train_reps=7, train_warmup=1,
                      heatmap_size=smoke, heatmap_grid=4, heatmap_batch=16, heatmap_reps=3,
                      heatmap_extra={"size": asdict(ModelSize()), "grid": 1, "batch": 2,
                                     "probes": 4, "reps": 1},
                      sample_images=2, sample_reps=3)
        cfg.notes.append("CPU: training batch 4 (GPU: 64); heatmap on the smoke-size LIFT, a 4x4 "
                         "grid of batch 16 (the 30x30 time is projected from seconds per cell), "
                         "plus one cell of the reference LIFT at batch 2; sampling 2 images")
    else:
        cfg = replace(cfg, reps=20, warmup=3, train_batch=64, train_reps=10, train_warmup=3,
                      heatmap_grid=30, heatmap_batch=16, heatmap_reps=1, sample_images=64,
                      sample_reps=3)
    cfg.train_options = tuple(options)
    cfg.skipped_options = skipped
    return cfg


# ------------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "reps": len(times), "times_s": [round(t, 6) for t in times]}


def _throughput(stats: dict, images: int) -> dict:
    """images/s of a stats dict: median from the median time, min from the max time."""
    return {"median": images / stats["median_s"], "min": images / stats["max_s"],
            "max": images / stats["min_s"], "images_per_call": images}


def measure(fns: dict[str, Callable[[], object]], reps: int, warmup: int, device: torch.device,
            warmups: dict[str, Callable[[], object]] | None = None) -> dict[str, dict]:
    """Median/min/max seconds of each function, interleaved ABBA: rep r runs them in order,
    rep r+1 in reverse, so a slow stretch of the machine is shared out evenly.

    `warmups`: a cheaper call per name for the warm-up rounds (default: the function itself).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            (warmups or fns).get(name, fns[name])()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            _sync(device)
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: _stats(t) for name, t in times.items()}


def cpu_peak_rss_bytes() -> int | None:
    """The process's peak resident set size so far (ru_maxrss; process-wide), None if unknown."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def cuda_peak(fn: Callable[[], object], device: torch.device) -> dict | None:
    """Peak CUDA memory of one call: absolute and above what was allocated before it."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"peak_bytes": int(peak), "above_resident_bytes": int(peak - before)}


def _ratio(naive_s: float, harness_s: float) -> float:
    return naive_s / harness_s if harness_s > 0 else math.inf


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------


class HarnessTrainer:
    """One optimizer step as explore.train.train runs it, built from the training config.

    Mirrors `train()`'s set-up (model, channels_last, optimizer from optim.optimizer, LR schedule,
    precision/autocast, grad scaler, EMA from the ema group, torch.compile) and its per-step body
    (`train_step`, scheduler step, `ema.update()`), so an option measured here is the option a
    training run gets.
    """

    def __init__(self, cfg, device: torch.device, batch: torch.Tensor):
        from hydra.utils import instantiate

        from .diffusion import CosineSchedule, loss_fn_for
        from .train import PRECISIONS, build_lr_schedule, ema_enabled, epoch_generators

        torch.manual_seed(int(cfg.seed))
        self.cfg = cfg
        from .devices import use_channels_last

        model = instantiate(cfg.model).to(device)
        if use_channels_last(cfg.trainer.channels_last, device):
            model = model.to(memory_format=torch.channels_last)
            batch = batch.contiguous(memory_format=torch.channels_last)
        self.model, self.batch = model, batch
        self.optimizer = instantiate(cfg.optim.optimizer)(params=model.parameters())
        self.scheduler = build_lr_schedule(self.optimizer, cfg.optim.lr_schedule, 10**9,
                                           int(cfg.optim.warmup_steps))
        precision = PRECISIONS[str(cfg.trainer.precision)]
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision is torch.float16)
        self.ema = instantiate(cfg.ema, model=model) if ema_enabled(cfg) else None
        self.fwd_model = torch.compile(model) if cfg.trainer.compile else model
        self.loss_fn = loss_fn_for(model)
        self.schedule = CosineSchedule()
        self.autocast = (torch.autocast(device.type, dtype=precision) if precision is not None
                         else contextlib.nullcontext())
        self.generator = epoch_generators(int(cfg.seed), 1, device)[1]
        model.train()

    def step(self) -> None:
        from .train import train_step

        t = self.cfg.trainer
        parts = train_step(self.fwd_model, self.model, self.loss_fn, self.schedule, self.batch,
                           self.generator, self.optimizer, self.scaler, self.autocast,
                           int(t.grad_accum), t.grad_clip)
        if parts["nonfinite"]:
            raise RuntimeError(f"bench: non-finite {parts['nonfinite']} in a training step")
        if not parts["skipped"]:
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update()


class NaiveTrainer:
    """The plain fp32 loop: AdamW as the study built it, naive EMA, `naive_train_step`."""

    def __init__(self, cfg, device: torch.device, batch: torch.Tensor):
        from hydra.utils import instantiate

        from .diffusion import CosineSchedule
        from .naive import NaiveEMA

        torch.manual_seed(int(cfg.seed))
        self.model = instantiate(cfg.model).to(device)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
        self.ema = NaiveEMA(self.model, EMA_DECAY)
        self.schedule = CosineSchedule()
        self.batch = batch

    def step(self) -> None:
        from .naive import naive_train_step

        naive_train_step(self.model, self.optimizer, self.schedule, self.batch, self.ema, 1.0)


def train_config(kind: str, size: ModelSize, device: torch.device, batch: int,
                 extra: list[str] = ()):
    """The training config (conf/train.yaml) of a bench run: defaults plus size and options."""
    from .config import compose

    return compose("train", [f"model={kind}", "ema=on", f"ema.decay={EMA_DECAY}",
                             f"device={device}", f"trainer.batch_size={batch}",
                             "trainer.progress=false", *size.overrides(), *extra])


def bench_train(cfg: BenchConfig, device: torch.device) -> dict:
    size, b = cfg.train_size, cfg.train_batch
    out: dict = {"config": {"model_size": size.describe(), "batch": b, "reps": cfg.train_reps,
                            "warmup": cfg.train_warmup, "ema_decay": EMA_DECAY,
                            "harness": "conf/train.yaml defaults (precision 32, AdamW as "
                                       "conf/optim/adamw.yaml, EMA on) + train_step",
                            "naive": "plain fp32 loop: zero_grad, loss, backward, clip 1.0, "
                                     "AdamW step, per-parameter EMA, loss.item()"}}
    gen = torch.Generator().manual_seed(0)
    batch = (torch.rand(b, 3, size.image_size, size.image_size, generator=gen) * 2 - 1).to(device)
    for kind in KINDS:
        variants: dict[str, Callable[[], object]] = {
            "harness": lambda k=kind: HarnessTrainer(train_config(k, size, device, b), device,
                                                     batch),
            "naive": lambda k=kind: NaiveTrainer(train_config(k, size, device, b), device, batch),
        }
        for opt in cfg.train_options:
            variants[opt] = lambda k=kind, o=opt: HarnessTrainer(
                train_config(k, size, device, b, TRAIN_OPTIONS[o]), device, batch)
        out[kind] = _run_train_variants(variants, cfg, device, b)
        res = out[kind]
        h = res["harness"]
        # harness vs the naive loop; each option vs the harness defaults (> 1: the option is faster)
        res["ratio_harness_vs_naive"] = (_ratio(res["naive"]["median_s"], h["median_s"])
                                         if "median_s" in res["naive"] and "median_s" in h
                                         else None)
        for opt in cfg.train_options:
            r = res[opt]
            if "median_s" in r and "median_s" in h:
                r["ratio_vs_harness_fp32"] = _ratio(h["median_s"], r["median_s"])
        for opt, why in cfg.skipped_options.items():
            res[opt] = {"skipped": why}
        _free(device)
    out["process_peak_rss_bytes"] = cpu_peak_rss_bytes()
    return out


def _run_train_variants(variants: dict[str, Callable[[], object]], cfg: BenchConfig,
                        device: torch.device, batch: int) -> dict[str, dict]:
    """CPU: all variants built, then timed round-robin (noise is shared). CUDA: one at a time,
    so that each one's peak memory is its own. A variant that fails records its error."""
    results: dict[str, dict] = {}
    warm = cfg.train_warmup

    def build(name):
        try:
            return variants[name]()
        except Exception as e:  # an option the platform lacks (e.g. compile without a compiler)
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            return None

    if device.type == "cuda":
        for name in variants:
            trainer = build(name)
            if trainer is None:
                continue
            try:
                w = max(warm, 2) if "compile" in name else warm
                stats = measure({name: trainer.step}, cfg.train_reps, w, device)[name]
                stats["memory"] = cuda_peak(trainer.step, device)
                results[name] = {**stats, "images_per_s": _throughput(stats, batch)}
            except Exception as e:
                results[name] = {"error": f"{type(e).__name__}: {e}"}
            del trainer
            _free(device)
        return {name: results[name] for name in variants}
    trainers = {name: t for name in variants if (t := build(name)) is not None}
    for name in list(trainers):  # warm up one by one: a failing option drops out alone
        try:
            for _ in range(warm):
                trainers[name].step()
        except Exception as e:
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            del trainers[name]
    stats = measure({n: t.step for n, t in trainers.items()}, cfg.train_reps, 0, device)
    for name, s in stats.items():
        results[name] = {**s, "images_per_s": _throughput(s, batch)}
    return {name: results[name] for name in variants}


# ------------------------------------------------------------------------------------------------
# EMA
# ------------------------------------------------------------------------------------------------


def bench_ema(cfg: BenchConfig, device: torch.device, train_result: dict | None) -> dict:
    from .ema import EMA
    from .models import count_parameters
    from .naive import NaiveEMA

    size = cfg.ema_size
    torch.manual_seed(0)
    model = size.build("lift").to(device)
    harness, naive = EMA(model, decay=EMA_DECAY), NaiveEMA(model, EMA_DECAY)
    # the floor: one copy of the weights (read 4 B, write 4 B per parameter; an EMA update reads
    # 8 and writes 4). An update near it is memory-bound, and no rewrite makes it much faster.
    params = [p.detach() for p in model.parameters()]
    copies = [p.clone() for p in params]
    stats = measure({"harness": harness.update, "naive": naive.update,
                     "copy": lambda: torch._foreach_copy_(copies, params)}, cfg.reps,
                    cfg.warmup, device)
    copies.clear()  # free the copy before the next section
    out = {"config": {"model": "lift", "model_size": size.describe(),
                      "parameters": count_parameters(model), "decay": EMA_DECAY,
                      "reps": cfg.reps, "warmup": cfg.warmup,
                      "harness": "explore.ema.EMA.update (in place)",
                      "naive": "shadow[name] = d * shadow[name] + (1 - d) * param.data"},
           "harness": stats["harness"], "naive": stats["naive"], "copy_floor": stats["copy"],
           "ratio": _ratio(stats["naive"]["median_s"], stats["harness"]["median_s"]),
           "harness_vs_copy_floor": _ratio(stats["harness"]["median_s"],
                                           stats["copy"]["median_s"])}
    out["harness"]["memory"] = cuda_peak(harness.update, device)
    out["naive"]["memory"] = cuda_peak(naive.update, device)
    del harness, naive
    # share of a full training step (forward, backward, optimizer, EMA) at the same size
    step = None
    if (train_result and cfg.train_size == size
            and "median_s" in train_result.get("lift", {}).get("harness", {})):
        step = train_result["lift"]["harness"]["median_s"]
        source = "the train section's LIFT harness step"
    else:
        trainer = HarnessTrainer(train_config("lift", size, device, cfg.train_batch), device,
                                 _batch(cfg.train_batch, size.image_size, device))
        step = measure({"s": trainer.step}, max(2, cfg.train_reps), 1, device)["s"]["median_s"]
        source = "LIFT harness steps timed here"
        del trainer
    out["train_step_s"] = step
    out["train_step_source"] = f"{source} (batch {cfg.train_batch}, {size.describe()})"
    out["step_share_percent"] = 100.0 * out["harness"]["median_s"] / step
    out["process_peak_rss_bytes"] = cpu_peak_rss_bytes()
    del model
    _free(device)
    return out


def _batch(b: int, s: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(b, 3, s, s, generator=gen) * 2 - 1).to(device)


# ------------------------------------------------------------------------------------------------
# heatmap
# ------------------------------------------------------------------------------------------------


def _heatmap_case(size: ModelSize, grid: int, batch: int, probes: int, reps: int, warmup: int,
                  device: torch.device) -> dict:
    from .diffusion import CosineSchedule
    from .heatmap import error_heatmap, pick_images
    from .models_jvp import fast_path_supported
    from .naive import naive_error_heatmap

    torch.manual_seed(0)
    model = size.build("lift").to(device).eval()
    data = torch.randint(0, 256, (max(batch, 16), 3, size.image_size, size.image_size),
                         dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    images = pick_images(data, count=batch, seed=0).to(device)
    schedule = CosineSchedule()
    kw = dict(num_probes=probes, seed=0)
    results: dict[str, object] = {}

    def harness(g=grid):
        results["harness"] = error_heatmap(model, schedule, images, grid_size=g, progress=False,
                                           **kw)

    def naive(g=grid):
        results["naive"] = naive_error_heatmap(model, schedule, images, grid_size=g, **kw)

    stats = measure({"harness": harness, "naive": naive}, reps, warmup, device,
                    warmups={"harness": lambda: harness(1), "naive": lambda: naive(1)})
    a, b = results["harness"], results["naive"]
    rel = max(float(np.max(np.abs(a.error_64 / b.error_64 - 1))),
              float(np.max(np.abs(a.error_32 / b.error_32 - 1))))
    cells = grid * grid
    out = {"config": {"model": "lift", "model_size": size.describe(), "grid": grid,
                      "cells": cells, "probes": probes, "batch": batch, "reps": reps,
                      "warmup": warmup,
                      "tangents": ("written-out LiftUNet forward-mode pass"
                                   if fast_path_supported(model) else "torch.func vmap(jvp)"),
                      "harness": "explore.heatmap.error_heatmap",
                      "naive": "per cell, per scale, per probe torch.func.jvp"},
           "harness": stats["harness"], "naive": stats["naive"],
           "ratio": _ratio(stats["naive"]["median_s"], stats["harness"]["median_s"]),
           "max_rel_diff": rel}
    for name, fn in (("harness", harness), ("naive", naive)):
        per_cell = out[name]["median_s"] / cells
        out[name]["per_cell_s"] = per_cell
        out[name]["projected_30x30_s"] = per_cell * 900
        out[name]["memory"] = cuda_peak(lambda f=fn: f(1), device)  # one cell (1x1 grid)
    return out


def bench_heatmap(cfg: BenchConfig, device: torch.device) -> dict:
    out = {"main": _heatmap_case(cfg.heatmap_size, cfg.heatmap_grid, cfg.heatmap_batch,
                                 cfg.heatmap_probes, cfg.heatmap_reps, 1, device)}
    extra = cfg.heatmap_extra
    if extra:
        size = ModelSize(**{**extra["size"], "hidden_dims": tuple(extra["size"]["hidden_dims"])})
        _free(device)
        out["extra"] = _heatmap_case(size, extra["grid"], extra["batch"], extra["probes"],
                                     extra["reps"], 0, device)
    else:
        out["extra"] = {"skipped": "no second heatmap size in this preset"}
    _free(device)
    out["ratio"] = out["main"]["ratio"]
    out["process_peak_rss_bytes"] = cpu_peak_rss_bytes()
    return out


# ------------------------------------------------------------------------------------------------
# DP path
# ------------------------------------------------------------------------------------------------


def synthetic_heatmap(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A heatmap-like input: gamma(SNR) at each scale's timestep times log-normal noise."""
    from .diffusion import CosineSchedule
    from .dp_path import grid_timesteps
    from .heatmap import gamma_snr

    schedule = CosineSchedule()
    ts = grid_timesteps(n, schedule.num_steps)
    gamma = gamma_snr(schedule, ts)
    rng = np.random.default_rng(seed)
    e64 = gamma[:, None] * rng.lognormal(0.0, 1.0, (n, n))
    e32 = gamma[None, :] * rng.lognormal(0.0, 1.0, (n, n))
    return e64, e32, schedule.log_snr(torch.as_tensor(ts)).numpy()


def bench_dp(cfg: BenchConfig, device: torch.device) -> dict:
    from .dp_path import optimal_path
    from .naive import naive_optimal_path

    e64, e32, lam = synthetic_heatmap(cfg.dp_grid)
    args = (cfg.dp_steps, cfg.dp_max_jump)
    results: dict[str, tuple] = {}

    def harness():
        results["harness"] = optimal_path(e64, e32, lam, *args)

    def naive():
        results["naive"] = naive_optimal_path(e64, e32, lam, *args)

    stats = measure({"harness": harness, "naive": naive}, cfg.reps, 1, device)
    (hp, hc), (np_, nc) = results["harness"], results["naive"]
    zeros = np.zeros_like(e32)  # DP-64 must agree too
    dp64 = optimal_path(e64, zeros, lam, *args) == naive_optimal_path(e64, zeros, lam, *args)
    return {"config": {"grid": cfg.dp_grid, "steps": cfg.dp_steps, "max_jump": cfg.dp_max_jump,
                       "reps": cfg.reps, "input": "synthetic heatmap: gamma(SNR) x log-normal",
                       "harness": "explore.dp_path.optimal_path",
                       "naive": "four nested loops per layer (explore.naive)"},
            "harness": stats["harness"], "naive": stats["naive"],
            "ratio": _ratio(stats["naive"]["median_s"], stats["harness"]["median_s"]),
            "paths_identical": hp == np_ and dp64, "costs_identical": hc == nc,
            "cost": hc, "path": [list(p) for p in hp]}


# ------------------------------------------------------------------------------------------------
# sampling
# ------------------------------------------------------------------------------------------------


def bench_sampling(cfg: BenchConfig, device: torch.device) -> dict:
    size, n, steps = cfg.sample_size, cfg.sample_images, cfg.sample_steps
    out: dict = {"config": {"model_size": size.describe(), "images": n, "steps": steps,
                            "batch": n, "reps": cfg.sample_reps, "eta": 0,
                            "harness": "explore.sampling (LIFT: diagonal path)",
                            "naive": "per-step DDIM loop, original-style step"}}
    for kind in KINDS:
        out[kind] = _sampling_case(kind, cfg, device)
        _free(device)
    out["process_peak_rss_bytes"] = cpu_peak_rss_bytes()
    return out


def _sampling_case(kind: str, cfg: BenchConfig, device: torch.device) -> dict:
    from .data import to_uint8
    from .diffusion import CosineSchedule
    from .naive import naive_sample_baseline, naive_sample_lift
    from .sampling import diagonal_path, initial_noise, sample_baseline, sample_lift

    size, n, steps = cfg.sample_size, cfg.sample_images, cfg.sample_steps
    schedule = CosineSchedule()
    s = size.image_size
    # the same starting noise for both, so that their images can be compared
    noise_hi = initial_noise((3, s, s), 0, n, 0, stream=0)
    noise_lo = initial_noise((3, s // 2, s // 2), 0, n, 0, stream=1)
    torch.manual_seed(0)
    model = size.build(kind).to(device).eval()
    results: dict[str, torch.Tensor] = {}
    common = dict(seed=0, batch_size=n, device=device, progress=False)

    def harness(k: int = steps) -> None:
        if kind == "baseline":
            results["harness"] = sample_baseline(model, schedule, n, num_steps=k, **common)
        else:
            results["harness"] = sample_lift(model, schedule, n, diagonal_path(k), **common)

    def naive(k: int = steps) -> None:
        if kind == "baseline":
            results["naive"] = naive_sample_baseline(model, schedule, n, k, device=device,
                                                     noise=noise_hi)
        else:
            results["naive"] = naive_sample_lift(model, schedule, n, diagonal_path(k),
                                                 device=device, noise=(noise_hi, noise_lo))

    # warm-up: one model call each (a 1-step sampler)
    stats = measure({"harness": harness, "naive": naive}, cfg.sample_reps, 1, device,
                    warmups={"harness": lambda: harness(1), "naive": lambda: naive(1)})
    diff = (results["harness"].int() - to_uint8(results["naive"] * 2 - 1).int()).abs().max()
    res = {name: {**st, "images_per_s": _throughput(st, n)} for name, st in stats.items()}
    res["ratio"] = _ratio(stats["naive"]["median_s"], stats["harness"]["median_s"])
    res["max_abs_diff_uint8"] = int(diff)
    for name, fn in (("harness", harness), ("naive", naive)):
        res[name]["memory"] = cuda_peak(fn, device)
    return res


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"hostname": socket.gethostname(), "platform": platform.platform(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
            else None,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if hasattr(os, "sched_getaffinity"):
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    return info


def targets(result: dict) -> list[dict]:
    """The issue's targets, each with its measured figure and whether it holds.

    CPU targets are judged only on a CPU run and the GPU one only on a GPU run (holds: null
    otherwise); a figure that was not measured gives holds: null.
    """
    cpu = result["device"] == "cpu"
    rows = []

    def add(name, measured, rule, holds, applies=True):
        rows.append({"target": name, "measured": measured, "rule": rule,
                     "holds": (bool(holds) if measured is not None else None) if applies
                     else None})

    def get(*keys):
        x = result
        for k in keys:
            if not isinstance(x, dict) or k not in x:
                return None
            x = x[k]
        return x

    ema = get("ema", "ratio")
    add("EMA update vs naive (CPU)", ema, ">= 4x", ema is not None and ema >= 4, cpu)
    share = get("ema", "step_share_percent")
    add("EMA share of a training step", share, "< 3%", share is not None and share < 3)
    dp = get("dp", "ratio")
    same = get("dp", "paths_identical") and get("dp", "costs_identical")
    add("DP vs nested loops, same path and cost", dp, ">= 20x and identical",
        dp is not None and dp >= 20 and same)
    hm = get("heatmap", "main", "ratio")
    add("heatmap vs per-cell, per-probe loop", hm, ">= 3x", hm is not None and hm >= 3)
    for kind in KINDS:
        tr = get("train", kind, "ratio_harness_vs_naive")
        add(f"training {kind} vs naive fp32 loop (CPU)", tr, ">= 1x (no slower)",
            tr is not None and tr >= 1, cpu)
        sp = get("sampling", kind, "ratio")
        add(f"sampling {kind} vs naive loop (CPU)", sp, ">= 1x (no slower)",
            sp is not None and sp >= 1, cpu)
        bf = get("train", kind, "bf16", "ratio_vs_harness_fp32")
        add(f"training {kind} bf16 vs fp32 images/s (GPU)", bf, ">= 1.5x",
            bf is not None and bf >= 1.5, not cpu)
    return rows


def run_bench(cfg: BenchConfig, command: str = "run_bench()", log=print) -> dict:
    """Run the selected sections; returns the JSON-ready result dict."""
    from .devices import resolve_device

    device = resolve_device(cfg.device)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    result: dict = {
        "schema": SCHEMA, "command": command, "preset": cfg.preset,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "torch_version": torch.__version__, "threads": cfg.threads,
        "machine": machine_info(device), "config": _plain(asdict(cfg)),
        "notes": list(cfg.notes) + _platform_notes(device),
    }
    runners = {"train": lambda: bench_train(cfg, device),
               "ema": lambda: bench_ema(cfg, device, result.get("train")),
               "heatmap": lambda: bench_heatmap(cfg, device),
               "dp": lambda: bench_dp(cfg, device),
               "sampling": lambda: bench_sampling(cfg, device)}
    try:
        for name in SECTIONS:
            if name not in cfg.sections:
                result[name] = {"skipped": "not selected (--only)"}
                continue
            log(f"bench: {name} ...")
            t0 = time.perf_counter()
            result[name] = runners[name]()
            result[name]["section_seconds"] = time.perf_counter() - t0
            log(f"bench: {name} done in {result[name]['section_seconds']:.1f} s")
    finally:
        torch.set_num_threads(threads_before)
    result["peak_memory"] = {
        "cuda_max_memory_allocated_bytes": (int(torch.cuda.max_memory_allocated(device))
                                            if device.type == "cuda" else None),
        "process_peak_rss_bytes": cpu_peak_rss_bytes(),
        "note": "process_peak_rss_bytes is ru_maxrss: process-wide, over the whole run "
                "(all sections and variants), not per measurement",
    }
    result["machine"]["load_average_end"] = (list(os.getloadavg()) if hasattr(os, "getloadavg")
                                             else None)
    result["targets"] = targets(result)
    result["wall_seconds"] = time.perf_counter() - t_start
    return result


def _platform_notes(device: torch.device) -> list[str]:
    notes = []
    if device.type == "cpu":
        notes.append("no GPU in this run: the GPU figures (batch 64, bf16 >= 1.5x fp32, "
                     "torch.compile) need `--device cuda:0` on a GPU machine")
        notes.append("peak memory on the CPU is the process's max RSS (ru_maxrss), "
                     "process-wide; CUDA runs report max_memory_allocated per measurement")
    return notes


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# ------------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------------


def _fmt_s(st: dict | None) -> str:
    if not st or "median_s" not in st:
        return (st or {}).get("error") or (st or {}).get("skipped") or "-"
    return f"{_num(st['median_s'])} s ({_num(st['min_s'])}-{_num(st['max_s'])})"


def _fmt_ips(st: dict | None) -> str:
    if not st or "images_per_s" not in st:
        return (st or {}).get("error") or (st or {}).get("skipped") or "-"
    ips = st["images_per_s"]
    return f"{_num(ips['median'])} img/s ({_num(ips['min'])}-{_num(ips['max'])})"


def _num(x: float) -> str:
    if x is None or not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 0.1:
        return f"{x:.2f}"
    if a >= 0.001:
        return f"{x:.4f}"
    return f"{x:.2e}"


def _x(r) -> str:
    return f"**{_num(r)}x**" if isinstance(r, (int, float)) else "-"


def _load(machine: dict) -> str:
    start, end = machine.get("load_average"), machine.get("load_average_end")
    if not start or not end:
        return ""
    return (f"; 1-min load average {start[0]:.1f} before, {end[0]:.1f} after (the bench adds "
            f"up to its thread count; more means other processes shared the CPU)")


def markdown(result: dict) -> str:
    """The result as a Markdown table (median, and min-max over the repetitions)."""
    lines = [f"explore.bench ({result['preset']}) on {result['device']}"
             f" ({result['machine'].get('gpu') or result['machine'].get('cpu')}, "
             f"{result['threads']} threads), torch {result['torch_version']}, "
             f"{_num(result.get('wall_seconds', 0))} s{_load(result['machine'])}",
             "",
             "| measurement | configuration | harness | naive / baseline | ratio |",
             "|---|---|---|---|---:|"]
    ema = result.get("ema", {})
    if "ratio" in ema:
        c = ema["config"]
        lines.append(f"| EMA update | LIFT {c['model_size']}, {c['parameters'] / 1e6:.1f}M "
                     f"params | {_fmt_s(ema['harness'])} | {_fmt_s(ema['naive'])} | "
                     f"{_x(ema['ratio'])} |")
        lines.append(f"| EMA update vs a copy of the weights (memory-bound floor) | "
                     f"torch._foreach_copy_ of the same {c['parameters'] / 1e6:.1f}M params | "
                     f"{_fmt_s(ema['harness'])} | {_fmt_s(ema['copy_floor'])} | "
                     f"{_num(ema['harness_vs_copy_floor'])} (1 = at the floor) |")
        lines.append(f"| EMA share of a training step | {ema['train_step_source']} | "
                     f"{_num(ema['step_share_percent'])} % of {_num(ema['train_step_s'])} s | "
                     f"- | - |")
    tr = result.get("train", {})
    if "config" in tr:
        c = tr["config"]
        for kind in KINDS:
            res = tr.get(kind, {})
            lines.append(f"| train {kind} | {c['model_size']}, batch {c['batch']}, fp32 | "
                         f"{_fmt_ips(res.get('harness'))} | {_fmt_ips(res.get('naive'))} "
                         f"(plain loop) | {_x(res.get('ratio_harness_vs_naive'))} |")
            for opt in TRAIN_OPTIONS:
                r = res.get(opt)
                if r is None:
                    continue
                lines.append(f"| train {kind}: {opt} | {' '.join(TRAIN_OPTIONS[opt])} | "
                             f"{_fmt_ips(r)} | {_fmt_ips(res.get('harness'))} (harness fp32) | "
                             f"{_x(r.get('ratio_vs_harness_fp32'))} |")
    hm = result.get("heatmap", {})
    for key in ("main", "extra"):
        h = hm.get(key, {})
        if "ratio" in h:
            c = h["config"]
            proj = (f"; 30x30 projected {_num(h['harness']['projected_30x30_s'])} s vs "
                    f"{_num(h['naive']['projected_30x30_s'])} s" if c["cells"] != 900 else "")
            lines.append(f"| heatmap | LIFT {c['model_size']}, {c['grid']}x{c['grid']} grid, "
                         f"K={c['probes']}, batch {c['batch']}{proj} | {_fmt_s(h['harness'])} | "
                         f"{_fmt_s(h['naive'])} | {_x(h['ratio'])} |")
    dp = result.get("dp", {})
    if "ratio" in dp:
        c = dp["config"]
        lines.append(f"| DP path | {c['grid']}x{c['grid']}, {c['steps']} steps, max_jump "
                     f"{c['max_jump']}; identical path: {dp['paths_identical']}, cost: "
                     f"{dp['costs_identical']} | {_fmt_s(dp['harness'])} | "
                     f"{_fmt_s(dp['naive'])} | {_x(dp['ratio'])} |")
    sp = result.get("sampling", {})
    if "config" in sp:
        c = sp["config"]
        for kind in KINDS:
            res = sp.get(kind, {})
            lines.append(f"| sampling {kind} | {c['model_size']}, {c['images']} images, "
                         f"{c['steps']} steps | {_fmt_ips(res.get('harness'))} | "
                         f"{_fmt_ips(res.get('naive'))} | {_x(res.get('ratio'))} |")
    pm = result.get("peak_memory", {})
    if pm.get("cuda_max_memory_allocated_bytes") is not None:
        lines.append(f"| peak memory | CUDA max_memory_allocated, whole run | "
                     f"{pm['cuda_max_memory_allocated_bytes'] / 2**30:.2f} GiB | - | - |")
    if pm.get("process_peak_rss_bytes") is not None:
        lines.append(f"| peak memory | process max RSS (ru_maxrss, process-wide, whole run) | "
                     f"{pm['process_peak_rss_bytes'] / 2**30:.2f} GiB | - | - |")
    lines += ["", "| target | measured | rule | holds |", "|---|---:|---|---|"]
    for t in result.get("targets", []):
        m = t["measured"]
        holds = {True: "yes", False: "**no**", None: "n/a"}[t["holds"]]
        lines.append(f"| {t['target']} | {_num(m) if isinstance(m, (int, float)) else '-'} | "
                     f"{t['rule']} | {holds} |")
    if result.get("notes"):
        lines.append("")
        lines += [f"- {n}" for n in result["notes"]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m explore.bench",
        description="Time the harness's hot paths against naive versions, in one process.",
        epilog="Ratios are 'times faster than the naive version' (or than the harness's fp32 "
               "defaults, for a training option).")
    p.add_argument("--quick", action="store_true",
                   help="small models and configurations: seconds (CI smoke test, laptops)")
    p.add_argument("--device", default="auto", help="auto (first GPU, else CPU) | cpu | cuda:N")
    p.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    default_threads = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                       else os.cpu_count() or 1)
    p.add_argument("--threads", type=int, default=default_threads,
                   help=f"torch CPU threads (default: all usable cores, {default_threads})")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions of every section (default: per preset)")
    p.add_argument("--compile", action="store_true",
                   help="also measure trainer.compile on the CPU (minutes of compiling)")
    p.add_argument("--heatmap-grid", type=int, default=None,
                   help="grid size of the main heatmap measurement (default: per preset)")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    from .devices import resolve_device

    device = resolve_device(args.device)
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"--only: unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    cfg = preset_config(args.quick, device, args.threads, compile_on_cpu=args.compile)
    cfg = replace(cfg, sections=sections)
    if args.reps is not None:
        if args.reps < 1:
            raise SystemExit(f"--reps must be >= 1, got {args.reps}")
        cfg = replace(cfg, reps=args.reps, train_reps=args.reps, heatmap_reps=args.reps,
                      sample_reps=args.reps)
    if args.heatmap_grid is not None:
        cfg = replace(cfg, heatmap_grid=args.heatmap_grid)
    return cfg


def main(argv: list[str] | None = None) -> int:
    from .errors import UserError

    args = parse_args(argv)
    try:
        cfg = config_from_args(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    command = "python -m explore.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    result = run_bench(cfg, command=command.strip(),
                       log=lambda m: print(m, file=sys.stderr, flush=True))
    print(markdown(result))
    if args.out is not None:
        from .files import atomic_write

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, lambda f: f.write(
            json.dumps(result, indent=2, default=str).encode()))
        print(f"\nJSON: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
