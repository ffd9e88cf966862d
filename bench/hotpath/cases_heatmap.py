"""Heatmap benchmark: the error heatmap (explore.lift.heatmap) vs the per-cell, per-scale, per-probe
jvp loop, on the same images and random draws; also checks that both compute the same map."""

from __future__ import annotations

import numpy as np
import torch

from explore.lift.heatmap import error_heatmap, pick_images
from explore.lift.heatmap_jvp import fast_path_supported
from explore.nets.diffusion import CosineSchedule

from ..common.sizes import ModelSize
from ..common.timing import cpu_peak_rss_bytes, cuda_peak, free, measure, ratio
from .config import BenchConfig
from .naive import naive_error_heatmap


def _heatmap_case(size: ModelSize, grid: int, batch: int, probes: int, reps: int, warmup: int,
                  device: torch.device) -> dict:
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
                      "harness": "explore.lift.heatmap.error_heatmap",
                      "naive": "per cell, per scale, per probe torch.func.jvp"},
           "harness": stats["harness"], "naive": stats["naive"],
           "ratio": ratio(stats["naive"]["median_s"], stats["harness"]["median_s"]),
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
        free(device)
        out["extra"] = _heatmap_case(size, extra["grid"], extra["batch"], extra["probes"],
                                     extra["reps"], 0, device)
    else:
        out["extra"] = {"skipped": "no second heatmap size in this preset"}
    free(device)
    out["ratio"] = out["main"]["ratio"]
    out["process_peak_rss_bytes"] = cpu_peak_rss_bytes()
    return out
