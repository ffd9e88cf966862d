"""Post-hoc EMA: the EMA weights of any power-profile length, reconstructed after training from
the snapshots of the power-function EMAs tracked during training (EDM2).

    python -m explore.train model=lift ema=posthoc ema.sigma_rels=[0.05,0.10]
    python -m explore.posthoc run_dir=outputs/lift_phema sigma_rel=[0.03,0.08,0.15]
    python -m explore.posthoc run_dir=... decay=[0.999]               # an exponential's length
    python -m explore.posthoc run_dir=... sigma_rel=[0.1] sources=[0.05] epochs=all   # a check
    python -m explore.evaluate run_dir=...          # scores raw, phema@0.05, ..., phema@0.03, ...

`posthoc(cfg)` is what tests and launchers call: it reads the composed config (conf/posthoc.yaml;
the only place it is read), turns it into `PosthocSettings` and runs the stage,
explore.evaluation.posthoc.posthoc (which documents what is written). The `__main__` block is
the Hydra wrapper.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from explore.core.config import to_plain
from explore.evaluation import posthoc as stage
from explore.evaluation.settings import PosthocSettings


def posthoc(cfg: DictConfig) -> list[Path]:
    """Reconstruct the requested post-hoc EMAs at the chosen epochs; returns the files written."""
    return stage.posthoc(PosthocSettings.from_config(to_plain(cfg)))


def _run(cfg: DictConfig) -> None:
    for p in posthoc(cfg):
        print(p)


if __name__ == "__main__":
    from explore.cli import hydra_entry

    hydra_entry("posthoc", _run)()
