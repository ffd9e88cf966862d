"""What the bench measures: the sections, the bench configuration (`BenchConfig`), the full and
quick presets (`preset_config`); the model sizes are bench.common.sizes'."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch

from ..common.sizes import SMOKE, ModelSize

SCHEMA = "explore-bench-v1"
SECTIONS = ("train", "ema", "heatmap", "dp", "sampling")
KINDS = ("baseline", "lift")
# trainer options measured against the harness defaults (config overrides, as on the command line)
TRAIN_OPTIONS: dict[str, list[str]] = {
    "bf16": ["trainer.precision=bf16"],
    "channels_last": ["trainer.channels_last=true"],
    "fused_adamw": ["optim.optimizer.fused=true"],
    "compile": ["trainer.compile=true"],
    "bf16_channels_last_fused_compile": ["trainer.precision=bf16", "trainer.channels_last=true",
                                         "optim.optimizer.fused=true", "trainer.compile=true"],
}


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
                      train_size=SMOKE, train_batch=8, train_reps=3, train_warmup=1,
                      heatmap_size=SMOKE, heatmap_grid=2, heatmap_batch=4, heatmap_reps=2,
                      sample_size=SMOKE, sample_images=4, sample_reps=2)
        cfg.notes.append("--quick: small models and configurations, a smoke test of the bench; "
                         "the full preset gives the figures that count")
    elif cpu:
        cfg = replace(cfg, reps=7, warmup=2, train_batch=4, train_reps=7, train_warmup=1,
                      heatmap_size=SMOKE, heatmap_grid=4, heatmap_batch=16, heatmap_reps=3,
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

