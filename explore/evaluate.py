"""FID (and KID, precision/recall, memorisation) of every checkpoint of a run, for the raw and
every EMA weight set.

    python -m explore.evaluate run_dir=outputs/smoke/lift-ema0.99-seed0       # every checkpoint
    python -m explore.evaluate run_dir=... eval.epochs=[200,400] eval.weights=[ema]
    python -m explore.evaluate run_dir=... eval.paths=[diagonal,dp_64,dp_total]
    python -m explore.evaluate checkpoint=old_runs/lift_ema_400ep.pth model=lift \
        data=folder data.root=/data/afhq

`evaluate(cfg)` is what tests and launchers call: it reads the composed config (the only place
evaluation's config is read), turns it into `EvalSettings` and runs
explore.evaluation.loop.evaluate. The `__main__` block is the Hydra wrapper.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from explore.core.config import to_plain
from explore.evaluation import loop
from explore.evaluation.settings import EvalSettings
from explore.run.folder import RunFolder

log = logging.getLogger("explore.evaluate")


def evaluate(cfg: DictConfig) -> Path:
    """Evaluate every selected checkpoint; returns the path of fid.csv."""
    return loop.evaluate(EvalSettings.from_config(to_plain(cfg)))


def with_run_eval_defaults(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A run trained with an experiment preset (experiment=smoke) keeps the preset's `eval`
    settings in its config.yaml. When the command line names no experiment, those become the
    defaults, so `explore.evaluate run_dir=<smoke run>` scores it like the smoke study does
    (not with the reference 30x30 heatmap, minutes per checkpoint on a CPU). eval.* options on
    the command line still win."""
    if not cfg.run_dir or any(o.lstrip("+~").startswith("experiment=") for o in overrides):
        return cfg
    saved = RunFolder(str(cfg.run_dir)).config
    try:
        run_eval = OmegaConf.load(saved).get("eval")
    except (OSError, ValueError):  # no or unreadable config: find_checkpoints reports it
        return cfg
    if not run_eval:
        return cfg
    if "seed" in run_eval:  # run folders from before eval.seeds saved eval.seed: not an option
        run_eval = OmegaConf.create({k: v for k, v in run_eval.items() if k != "seed"})
    user = OmegaConf.from_dotlist([o for o in overrides if o.startswith("eval.")])
    merged = OmegaConf.merge(cfg.eval, run_eval, user.get("eval") or {})
    log.info("eval settings of the run's preset (%s): %s", saved,
             OmegaConf.to_container(run_eval))
    cfg = cfg.copy()
    cfg.eval = merged
    return cfg


def _run(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    cfg = with_run_eval_defaults(cfg, list(HydraConfig.get().overrides.task))
    print(f"results: {evaluate(cfg)}")


if __name__ == "__main__":
    from explore.cli import hydra_entry

    hydra_entry("evaluate", _run)()
