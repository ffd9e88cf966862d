"""Training benchmarks: step throughput of Baseline and LIFT, harness vs a plain fp32 loop, and
each speed option of the training config against the harness defaults."""

from __future__ import annotations

from collections.abc import Callable

import torch

from explore.nets.diffusion import CosineSchedule

from ..common.timing import cpu_peak_rss_bytes, cuda_peak, free, measure, ratio, throughput
from ..common.training import EMA_DECAY, HarnessTrainer, random_batch, train_config
from .config import KINDS, TRAIN_OPTIONS, BenchConfig
from .naive import NaiveEMA, naive_train_step


class NaiveTrainer:
    """The plain fp32 loop: AdamW as the study built it, naive EMA, `naive_train_step`."""

    def __init__(self, cfg, device: torch.device, batch: torch.Tensor):
        from hydra.utils import instantiate

        torch.manual_seed(int(cfg.seed))
        self.model = instantiate(cfg.model).to(device)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
        self.ema = NaiveEMA(self.model, EMA_DECAY)
        self.schedule = CosineSchedule()
        self.batch = batch

    def step(self) -> None:
        naive_train_step(self.model, self.optimizer, self.schedule, self.batch, self.ema, 1.0)


def bench_train(cfg: BenchConfig, device: torch.device) -> dict:
    size, b = cfg.train_size, cfg.train_batch
    out: dict = {"config": {"model_size": size.describe(), "batch": b, "reps": cfg.train_reps,
                            "warmup": cfg.train_warmup, "ema_decay": EMA_DECAY,
                            "harness": "conf/train.yaml defaults (precision 32, AdamW as "
                                       "conf/optim/adamw.yaml, EMA on) + train_step",
                            "naive": "plain fp32 loop: zero_grad, loss, backward, clip 1.0, "
                                     "AdamW step, per-parameter EMA, loss.item()"}}
    batch = random_batch(b, size.image_size, device)
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
        res["ratio_harness_vs_naive"] = (ratio(res["naive"]["median_s"], h["median_s"])
                                         if "median_s" in res["naive"] and "median_s" in h
                                         else None)
        for opt in cfg.train_options:
            r = res[opt]
            if "median_s" in r and "median_s" in h:
                r["ratio_vs_harness_fp32"] = ratio(h["median_s"], r["median_s"])
        for opt, why in cfg.skipped_options.items():
            res[opt] = {"skipped": why}
        free(device)
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
                results[name] = {**stats, "images_per_s": throughput(stats, batch)}
            except Exception as e:
                results[name] = {"error": f"{type(e).__name__}: {e}"}
            del trainer
            free(device)
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
        results[name] = {**s, "images_per_s": throughput(s, batch)}
    return {name: results[name] for name in variants}

