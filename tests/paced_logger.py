"""A logger (the `logger` config group's interface, explore.run.loggers) that makes training
last: it sleeps at every epoch's end. A test that needs a job still running when SLURM's time
limit comes passes `+logger.paced._target_=paced_logger.PacedLogger` (and tests/ on
PYTHONPATH) instead of training for that long: the job waits instead of computing, and its
weights are those of the same training without the logger (a logger only reads)."""

from __future__ import annotations

import time

from explore.run.loggers import Logger


class PacedLogger(Logger):
    name = "paced"

    def __init__(self, run_dir: str, stage: str = "train", seconds: float = 2.5):
        self.seconds = seconds if stage == "train" else 0.0

    def log_scalars(self, epoch: int, values: dict[str, float]) -> None:
        if "train/loss" in values:  # the epoch's row (not the sample grid's timing)
            time.sleep(self.seconds)
