"""EMA benchmark: one EMA update of the LIFT model, harness vs a per-parameter update that
allocates new tensors, against a plain copy of the weights, and as a share of a training step."""

from __future__ import annotations

import torch

from explore.ema import EMA
from explore.nets.models import count_parameters

from ..common.timing import cpu_peak_rss_bytes, cuda_peak, free, measure, ratio
from ..common.training import EMA_DECAY, HarnessTrainer, random_batch, train_config
from .config import BenchConfig
from .naive import NaiveEMA


def bench_ema(cfg: BenchConfig, device: torch.device, train_result: dict | None) -> dict:
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
           "ratio": ratio(stats["naive"]["median_s"], stats["harness"]["median_s"]),
           "harness_vs_copy_floor": ratio(stats["harness"]["median_s"],
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
                                 random_batch(cfg.train_batch, size.image_size, device))
        step = measure({"s": trainer.step}, max(2, cfg.train_reps), 1, device)["s"]["median_s"]
        source = "LIFT harness steps timed here"
        del trainer
    out["train_step_s"] = step
    out["train_step_source"] = f"{source} (batch {cfg.train_batch}, {size.describe()})"
    out["step_share_percent"] = 100.0 * out["harness"]["median_s"] / step
    out["process_peak_rss_bytes"] = cpu_peak_rss_bytes()
    del model
    free(device)
    return out

