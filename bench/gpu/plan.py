"""What the GPU check measures on each kind of device: the GPU plan (the reference model size,
batch 64, the study's numbers) and its scaled-down CPU twin (smoke model sizes, tiny batches, a
few iterations), which runs the same code in a few minutes on 2 cores so that CI proves the
check works before any GPU sees it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..common.sizes import SMOKE, ModelSize

# training variants of step 3: config overrides, as on the command line. channels_last is set
# explicitly (its default, null, means "on" on a CPU), so a name means the same on both devices.
TRAIN_VARIANTS: dict[str, list[str]] = {
    "fp32": ["trainer.precision=32", "trainer.channels_last=false"],
    "bf16": ["trainer.precision=bf16", "trainer.channels_last=false"],
    "bf16_channels_last": ["trainer.precision=bf16", "trainer.channels_last=true"],
    "bf16_channels_last_compile": ["trainer.precision=bf16", "trainer.channels_last=true",
                                   "trainer.compile=true"],
}
COMPILED = "bf16_channels_last_compile"


@dataclass
class Plan:
    device: torch.device
    cuda: bool
    size: ModelSize               # correctness and throughput model size
    # step 1
    forward_batch: int
    sample_images: int            # DDIM images compared CPU vs device
    sample_steps: int
    # step 2: a 2-epoch smoke training (LIFT, shapes), killed once and resumed
    train_images: int             # data.num_images
    train_batch: int              # trainer.batch_size (steps per epoch = images // batch)
    eval_overrides: list[str]
    # step 3
    train_batch_bench: int        # the study's batch on a GPU
    train_warmup: int
    train_reps: int
    variants: tuple[str, ...]
    skipped_variants: dict[str, str]
    sampling_batch: int           # eval.batch_size
    sampling_reps: int
    feature_images: int
    feature_batch: int
    heatmap_grid: int
    heatmap_batch: int
    heatmap_probes: int
    bootstrap_dim: int
    bootstrap_images: int
    bootstrap_reps: int
    notes: list[str] = field(default_factory=list)
    # seconds each step is expected to need: the budget is shared out in these proportions
    weights: dict[int, float] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "cuda" if self.cuda else "cpu"


def make_plan(device: torch.device, gpus_visible: int) -> Plan:
    """The GPU plan for a CUDA device, the scaled-down one for the CPU."""
    if device.type == "cuda":
        return Plan(
            device=device, cuda=True, size=ModelSize(), forward_batch=4, sample_images=4,
            sample_steps=18, train_images=1024, train_batch=32,
            eval_overrides=["eval.num_images=512", "eval.bootstrap=20"],
            train_batch_bench=64, train_warmup=3, train_reps=10,
            variants=tuple(TRAIN_VARIANTS), skipped_variants={},
            sampling_batch=64, sampling_reps=3, feature_images=512, feature_batch=64,
            heatmap_grid=4, heatmap_batch=16, heatmap_probes=4,
            bootstrap_dim=2048, bootstrap_images=15_803, bootstrap_reps=3,
            notes=["GPU plan: the reference model size (58.5M-parameter LIFT), training batch "
                   "64, sampling at the evaluation batch (64), 18 DDIM steps"],
            weights={1: 40, 2: 110, 3: 290, 4: 1, 5: 40 if gpus_visible >= 2 else 1,
                     6: 90 if gpus_visible >= 2 else 1})
    return Plan(
        device=device, cuda=False, size=SMOKE, forward_batch=2, sample_images=4, sample_steps=18,
        train_images=128, train_batch=32,  # 4 steps an epoch: killed at step 6
        eval_overrides=["eval.num_images=64", "eval.num_steps=4", "eval.batch_size=32",
                        "eval.heatmap.grid_size=4", "eval.heatmap.num_probes=1",
                        "eval.heatmap.num_images=2", "eval.bootstrap=0"],
        train_batch_bench=4, train_warmup=1, train_reps=3,
        variants=tuple(v for v in TRAIN_VARIANTS if v != COMPILED),
        skipped_variants={COMPILED: "skipped on the CPU: torch.compile of the UNet needs a C "
                                    "compiler and minutes there; the GPU run measures it"},
        sampling_batch=4, sampling_reps=2, feature_images=2, feature_batch=2,  # ~1 s an image
        heatmap_grid=2, heatmap_batch=2, heatmap_probes=1,
        bootstrap_dim=256, bootstrap_images=512, bootstrap_reps=2,
        notes=["CPU mode: the same steps scaled down (smoke model size dims 16x32 at 32 px, "
               "training batch 4, a few iterations) to prove the check works; its rates and "
               "projected hours are CPU figures at smoke size, not meaningful for a GPU"],
        weights={1: 20, 2: 110, 3: 80, 4: 1, 5: 40, 6: 40})
