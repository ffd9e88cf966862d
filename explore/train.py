"""Train one model of the study, with or without EMA.

    python -m explore.train model=lift ema=on device=1
    python -m explore.train model=baseline ema=off data=folder data.root=/data/afhq64
    python -m explore.train model=lift ema=on device=cpu experiment=smoke
    python -m explore.train model=lift ema=on resume=true hydra.run.dir=outputs/my_run
    python -m explore.train --help            # options;  --cfg job: the composed config

`train(cfg, run_dir)` is what tests and launchers call: it reads the composed config (the only
place training's config is read), turns it into `TrainSettings` and runs the recipe,
explore.training.loop.train. The `__main__` block is the Hydra wrapper.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from omegaconf import DictConfig

from explore.core.config import to_plain
from explore.training import loop
from explore.training.settings import TrainSettings


def train(cfg: DictConfig, run_dir: str | Path, command: list[str] | None = None) -> Path:
    """Train (or resume) one run in `run_dir`; returns the run folder. `command`: the
    overrides it was started with, for the advice of error messages."""
    return loop.train(TrainSettings.from_config(to_plain(cfg)), run_dir, command)


def _run(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run = Path(hc.runtime.output_dir)
    try:
        train(cfg, run, command=list(hc.overrides.task))
    except BaseException:
        with contextlib.suppress(OSError):  # a refused start leaves no empty folder behind
            if run.is_dir() and not any(run.iterdir()):
                run.rmdir()
        raise


if __name__ == "__main__":
    from explore.cli import hydra_entry

    hydra_entry("train", _run)()
