"""What one evaluation shares across its rows (`EvalContext`): its settings, the run, the real
images and their features, the results file, the environment; set up once by
explore.evaluation.loop.prepare."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from explore.evaluation import metrics as metriclib
from explore.evaluation.settings import EvalOptions, EvalSettings
from explore.nets.data import ImageSet
from explore.nets.diffusion import CosineSchedule
from explore.run.folder import RunFolder
from explore.run.info import RunInfo
from explore.run.loggers import RunLoggers
from explore.run.results import ResultsFile, missing_parts


@dataclass
class EvalContext:
    """Everything one evaluation needs, set up once (`prepare`) and shared by every row."""

    e: EvalOptions               # the eval.* options
    settings: EvalSettings       # the whole command (model=/data= for lone checkpoints)
    device: torch.device
    run: RunFolder               # where eval/ goes
    checkpoints: list[tuple[int, Path]]
    info: RunInfo                # the run's identity (run.json, or read off a lone checkpoint)
    data: ImageSet               # training images: the real set and the heatmap's images
    real: torch.Tensor           # the real images FID compares with
    real_name: str               # their statistics' cache name
    extractor: str
    num_images: int
    schedule: CosineSchedule     # the run's noise schedule
    results: ResultsFile
    trusted: bool
    progress: bool
    logger: RunLoggers           # the run's own loggers (its config.yaml): rows at their epoch
    seeds: tuple[int, ...]       # sampling seeds (eval.seeds)
    subset_seed: int             # the real subset and the heatmap (never the sampling seed)
    metrics: list[str]           # eval.metrics
    bootstrap: int               # replicate FIDs per row (0: none; always 0 with several seeds)
    features: metriclib.FeatureExtractor   # built once, used by every row
    train_set: metriclib.RealSet # every training image (memorisation's neighbours), lazily
    real_set: metriclib.RealSet  # the real images' features and statistics, computed once
    environment: dict            # what makes this evaluation (run.environment): rows name it
    unreadable: dict[Path, str]  # checkpoints that cannot be read: skipped, named at the end
    boot: metriclib.FidBootstrap | None = None  # made on first use (sqrt of the real covariance)

    def identity(self) -> dict:
        i = self.info
        return {"run": i.run, "model": i.model, "seed": i.seed, "ema_decay": i.ema_decay or "",
                "dataset": i.dataset, "image_size": i.image_size}

    def key(self, epoch: int, weights: str, path: str, seed: int) -> dict:
        """The columns that identify one measurement (explore.run.results.FID_KEY)."""
        return {"epoch": epoch, "weights": weights, "path": path, "sample_seed": int(seed),
                "num_steps": int(self.e.num_steps), "num_images": self.num_images,
                "extractor": self.extractor,
                "extractor_weights": self.features.weights_id, "schedule": self.schedule.name,
                "final_step": str(self.e.final_step), "subset_seed": self.subset_seed}

    def missing(self, row: dict | None) -> list[str]:
        """What an existing row lacks of this evaluation (["row"]: there is none)."""
        return missing_parts(row, self.metrics, self.bootstrap, int(self.e.bootstrap_seed))
