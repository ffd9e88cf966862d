"""Sampling benchmark: 18-step DDIM throughput of both models, explore.nets.sampling (LIFT on the
diagonal path) vs a per-step loop, from the same starting noise; also compares their images."""

from __future__ import annotations

import torch

from explore.nets.data import to_uint8
from explore.nets.diffusion import CosineSchedule
from explore.nets.sampling import diagonal_path, initial_noise, sample_baseline, sample_lift

from ..common.timing import cpu_peak_rss_bytes, cuda_peak, free, measure, ratio, throughput
from .config import KINDS, BenchConfig
from .naive import naive_sample_baseline, naive_sample_lift


def bench_sampling(cfg: BenchConfig, device: torch.device) -> dict:
    size, n, steps = cfg.sample_size, cfg.sample_images, cfg.sample_steps
    out: dict = {"config": {"model_size": size.describe(), "images": n, "steps": steps,
                            "batch": n, "reps": cfg.sample_reps, "eta": 0,
                            "harness": "explore.nets.sampling (LIFT: diagonal path)",
                            "naive": "per-step DDIM loop, original-style step"}}
    for kind in KINDS:
        out[kind] = _sampling_case(kind, cfg, device)
        free(device)
    out["process_peak_rss_bytes"] = cpu_peak_rss_bytes()
    return out


def _sampling_case(kind: str, cfg: BenchConfig, device: torch.device) -> dict:
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
    res = {name: {**st, "images_per_s": throughput(st, n)} for name, st in stats.items()}
    res["ratio"] = ratio(stats["naive"]["median_s"], stats["harness"]["median_s"])
    res["max_abs_diff_uint8"] = int(diff)
    for name, fn in (("harness", harness), ("naive", naive)):
        res[name]["memory"] = cuda_peak(fn, device)
    return res
