"""Where a run's numbers and pictures go besides metrics.csv: TensorBoard, MLflow or W&B (the
`logger` config group, conf/logger/), for training and evaluation alike.

    logger=csv                  metrics.csv only (the default; training writes it with any logger)
    logger=tensorboard          <run>/tensorboard/: tensorboard --logdir outputs/train
    logger=mlflow               sqlite:///outputs/mlflow.db: mlflow ui --backend-store-uri ...
    logger=wandb                offline in <run>/wandb/ unless WANDB_MODE says otherwise
    logger=many                 csv + tensorboard + mlflow; any mix: logger=[tensorboard,wandb]

Each logger (explore.run.logger_backends) is one entry of the `logger` node, built by its `_target_`
with the run folder and the stage (train | evaluate), and has one interface: `log_params(dict)`,
`log_scalars(epoch, dict)`, `log_image(name, epoch, image)`, `close()`. Every x axis is the
epoch, so training's scalars and evaluation's FID share it. `RunLoggers` holds a run's loggers: a
logger that raises is reported once and switched off, so logging never stops training or
evaluation.

The packages are optional (`pip install -e '.[tensorboard]'`, `.[mlflow]`, `.[wandb]`) and
imported only by the logger that needs them; asking for one that is not installed is a
ConfigError naming the install command (`check_loggers`, before anything is written).
Evaluation reads the run's own `logger` settings from its config.yaml (`run_loggers`) and logs
into the same TensorBoard folder, MLflow run or W&B run (ids kept in <run>/loggers.json); there
a logger whose package is missing is skipped with a warning.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
from pathlib import Path

import yaml

from explore.core.config import build, upgrade_targets
from explore.core.errors import ConfigError
from explore.core.files import write_text
from explore.run.folder import RunFolder
from explore.run.results import FID_KEY

log = logging.getLogger("explore.loggers")

STAGES = ("train", "evaluate")


class LoggerUnavailable(ConfigError):
    """A logger was asked for whose package is not installed."""


# -- the interface ----------------------------------------------------------------------------
class Logger:
    """One place the run's numbers go. Subclasses name the package they need and its extra."""

    name = "logger"
    package = ""        # the import that must work
    extra = ""          # pip install -e '.[<extra>]'

    def log_params(self, params: dict) -> None:
        """The resolved config, flattened (model.hidden_dims: [16, 32])."""

    def log_scalars(self, epoch: int, values: dict[str, float]) -> None:
        """Scalars at an epoch, by tag (train/loss, ema/share/ema, eval/fid/raw/ddim)."""

    def log_image(self, name: str, epoch: int, image) -> None:
        """A PIL image at an epoch (the sample grids)."""

    def close(self, failed: bool = False) -> None:
        """Flush and end; `failed`: the stage stopped with an error."""

    def where(self) -> str:
        """How to look at what this logger wrote (one log line)."""
        return ""


def require(cls: type[Logger]):
    """The logger's package, or LoggerUnavailable with the install command."""
    try:
        return importlib.import_module(cls.package)
    except ImportError as e:
        raise LoggerUnavailable(
            f"logger={cls.name} needs the {cls.package} package, which is not installed "
            f"({e}): pip install -e '.[{cls.extra}]'  (or pip install {cls.package})") from None


# -- ids of the runs a run folder logs into (loggers.json) -------------------------------------
def ids(run: RunFolder) -> dict:
    """{logger name: the id of its run} of a run folder (loggers.json)."""
    try:
        return json.loads(run.loggers_json.read_text())
    except (OSError, ValueError):
        return {}


def save_id(run: RunFolder, name: str, value: dict) -> None:
    """Keep the id of the run a logger writes into (MLflow run, W&B run) in loggers.json."""
    saved = ids(run)
    saved[name] = value
    write_text(run.loggers_json, json.dumps(saved, indent=2))


def experiment_name(run_dir: Path) -> str:
    """The run folder's parent below outputs/: study/smoke for outputs/study/smoke/<run>,
    train for outputs/train/<run> (one MLflow experiment, W&B group, per study or group)."""
    parent = Path(run_dir).resolve().parent
    parts = parent.parts
    if "outputs" in parts:
        below = parts[len(parts) - parts[::-1].index("outputs"):]
        if below:
            return "/".join(below)
    return parent.name or "runs"


# -- a run's loggers --------------------------------------------------------------------------
def _entries(node) -> list[tuple[str, dict]]:
    """(name, node) of every logger in the `logger` node (a plain dict)."""
    if not isinstance(node, dict):
        return []
    return [(str(k), v) for k, v in node.items() if isinstance(v, dict) and v.get("_target_")]


def _logger_class(name: str, entry) -> type[Logger]:
    from hydra.utils import get_class

    try:
        return get_class(str(entry["_target_"]))
    except Exception as e:  # noqa: BLE001 - hydra's error types vary
        raise ConfigError(f"logger.{name}._target_={entry['_target_']!r}: {e}") from None


def check_loggers(node) -> None:
    """Before training writes anything: every asked-for logger's package imports."""
    for name, entry in _entries(node):
        cls = _logger_class(name, entry)
        if getattr(cls, "package", ""):
            require(cls)


class RunLoggers:
    """The loggers of one stage of one run. A logger that raises is reported once, closed and
    switched off; the others go on."""

    def __init__(self, loggers: list[Logger] | None = None):
        self.loggers = list(loggers or [])

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def _each(self, method: str, *args) -> None:
        for lg in list(self.loggers):
            try:
                getattr(lg, method)(*args)
            except Exception as e:  # noqa: BLE001 - logging never stops the run
                self.loggers.remove(lg)
                log.warning("logger %s failed in %s (%s: %s): switched off for the rest of this "
                            "run; training and evaluation go on", lg.name, method,
                            type(e).__name__, e)
                try:
                    lg.close(failed=True)
                except Exception:  # noqa: BLE001, S110 - it is broken already
                    pass

    def log_params(self, params: dict) -> None:
        self._each("log_params", params)

    def log_scalars(self, epoch: int, values: dict[str, float]) -> None:
        if values:
            self._each("log_scalars", int(epoch), values)

    def log_image(self, name: str, epoch: int, image) -> None:
        self._each("log_image", name, int(epoch), image)

    def log_epoch(self, epoch: int, row: dict) -> None:
        """A metrics.csv row as scalars (`epoch_scalars`)."""
        self.log_scalars(epoch, epoch_scalars(row))

    def log_eval(self, row: dict) -> None:
        """An eval/fid.csv row at its epoch (`eval_scalars`)."""
        try:
            epoch = int(row["epoch"])
        except (KeyError, TypeError, ValueError):
            return
        self.log_scalars(epoch, eval_scalars(row))

    def close(self, failed: bool = False) -> None:
        self._each("close", failed)
        self.loggers = []

    def __enter__(self) -> RunLoggers:
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(failed=kind is not None)


def open_loggers(node, run_dir: str | Path, stage: str = "train") -> RunLoggers:
    """The loggers of a `logger` config node. Training: a missing package is an error;
    evaluation: a warning. A logger that fails to start is reported and left out."""
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}: use one of {STAGES}")
    out = []
    for name, entry in _entries(node):
        try:
            lg = build(entry, run_dir=str(run_dir), stage=stage)
        except LoggerUnavailable as e:
            if stage == "train":
                raise
            log.warning("%s; evaluation goes on without it", e)
            continue
        except Exception as e:  # noqa: BLE001 - logging never stops the run
            log.warning("logger %s could not start (%s: %s): switched off; the run goes on",
                        name, type(e).__name__, e)
            continue
        if lg.where():
            log.info("%s", lg.where())
        out.append(lg)
    return RunLoggers(out)


def run_loggers(run_dir: str | Path, stage: str = "evaluate") -> RunLoggers:
    """The loggers a run was trained with (its config.yaml), for evaluation to log into."""
    try:
        node = upgrade_targets(
            (yaml.safe_load(RunFolder(run_dir).config.read_text()) or {}).get("logger"))
    except (OSError, ValueError, AttributeError):  # a lone checkpoint's folder: no config
        return RunLoggers()
    return open_loggers(node, run_dir, stage)


# -- tags -------------------------------------------------------------------------------------
def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def epoch_scalars(row: dict) -> dict[str, float]:
    """metrics.csv columns as tags: loss -> train/loss, lr -> train/lr, ema_share ->
    ema/share/ema, ema_rms_delta@0.999 -> ema/rms_delta/ema@0.999, phema_share@0.1 ->
    ema/share/phema@0.1 (the weight-set names of explore.evaluate)."""
    out = {}
    for key, value in row.items():
        x = _number(value)
        if key == "epoch" or x is None:
            continue
        kind, _, rest = key.partition("_")
        if kind in ("ema", "phema") and rest:
            stat, _, arg = rest.partition("@")
            out[f"ema/{stat}/{kind}{'@' + arg if arg else ''}"] = x
        else:
            out[f"train/{key}"] = x
    return out


# identity and protocol columns of a fid.csv row: not measurements
_EVAL_SKIP = set(FID_KEY) | {"run", "model", "seed", "ema_decay", "dataset", "image_size",
                             "step", "ema_share_low"}


def eval_scalars(row: dict) -> dict[str, float]:
    """The measurements of an eval/fid.csv row as eval/<column>/<weights>/<path> (fid, and any
    other numeric column evaluation writes)."""
    where = f"{row.get('weights', 'raw')}/{row.get('path', 'ddim')}"
    return {f"eval/{key}/{where}": x for key, value in row.items()
            if key not in _EVAL_SKIP and (x := _number(value)) is not None}
