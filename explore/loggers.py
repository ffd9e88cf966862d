"""Where a run's numbers and pictures go besides metrics.csv: TensorBoard, MLflow or W&B (the
`logger` config group, conf/logger/), for training and evaluation alike.

    logger=csv                  metrics.csv only (the default; training writes it with any logger)
    logger=tensorboard          <run>/tensorboard/: tensorboard --logdir outputs/train
    logger=mlflow               sqlite:///outputs/mlflow.db: mlflow ui --backend-store-uri ...
    logger=wandb                offline in <run>/wandb/ unless WANDB_MODE says otherwise
    logger=many                 csv + tensorboard + mlflow; any mix: logger=[tensorboard,wandb]

Each logger is one entry of the `logger` node, built by its `_target_` with the run folder and
the stage (train | evaluate), and has one interface: `log_params(dict)`, `log_scalars(epoch,
dict)`, `log_image(name, epoch, image)`, `close()`. Every x axis is the epoch, so training's
scalars and evaluation's FID share it. `RunLoggers` holds a run's loggers: a logger that raises
is reported once and switched off, so logging never stops training or evaluation.

The packages are optional (`pip install -e '.[tensorboard]'`, `.[mlflow]`, `.[wandb]`) and
imported only by the logger that needs them; asking for one that is not installed is a
ConfigError naming the install command (`check_loggers`, before anything is written).
Evaluation reads the run's own `logger` settings from its config.yaml (`run_loggers`) and logs
into the same TensorBoard folder, MLflow run or W&B run (ids kept in <run>/loggers.json); there
a logger whose package is missing is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import time
import uuid
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .files import write_text
from .runfiles import FID_KEY, RunFolder

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
def _ids(run: RunFolder) -> dict:
    try:
        return json.loads(run.loggers_json.read_text())
    except (OSError, ValueError):
        return {}


def _save_id(run: RunFolder, name: str, value: dict) -> None:
    ids = _ids(run)
    ids[name] = value
    write_text(run.loggers_json, json.dumps(ids, indent=2))


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


# -- TensorBoard ------------------------------------------------------------------------------
class TensorBoardLogger(Logger):
    """Event files in <run>/tensorboard (training and evaluation write beside each other:
    TensorBoard shows the folder as one run)."""

    name, package, extra = "tensorboard", "tensorboard", "tensorboard"

    def __init__(self, run_dir: str, stage: str = "train", dir: str | None = None,
                 flush_secs: int = 30):
        require(TensorBoardLogger)
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(dir) if dir else RunFolder(run_dir).tensorboard_dir
        self.runs = Path(run_dir).parent  # where `tensorboard --logdir` shows every run
        self.writer = SummaryWriter(str(self.dir), flush_secs=int(flush_secs),
                                    filename_suffix=f".{stage}")

    def log_params(self, params: dict) -> None:
        text = "\n".join(f"    {k}: {v}" for k, v in params.items())  # a Markdown code block
        self.writer.add_text("config", text, 0)

    def log_scalars(self, epoch: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, epoch)

    def log_image(self, name: str, epoch: int, image) -> None:
        import numpy as np

        self.writer.add_image(name, np.asarray(image.convert("RGB")), epoch, dataformats="HWC")
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()

    def where(self) -> str:
        return f"TensorBoard: {self.dir} (tensorboard --logdir {self.runs})"


# -- MLflow -----------------------------------------------------------------------------------
def _sqlite_absolute(uri: str) -> str:
    """sqlite:///relative/path -> sqlite:////absolute/path (jobs may run elsewhere)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = Path(uri[len(prefix):]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return uri


@contextlib.contextmanager
def _store_lock(uri: str):
    """Parallel jobs starting at once would each create the sqlite store's tables (MLflow's
    migrations race: "Online migration expected to match one row"): one at a time, by a lock
    file beside the database."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        fcntl = None
    if fcntl is None or not uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(uri[len("sqlite:///"):] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _retry(fn, *args, tries: int = 6, **kwargs):
    """Parallel study jobs share one sqlite file: retry on 'database is locked' and on a
    table or experiment another job has just created."""
    for k in range(tries):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - mlflow wraps sqlalchemy's errors variously
            text = str(e).lower()
            if k == tries - 1 or not ("locked" in text or "already exists" in text):
                raise
            time.sleep(0.2 * 2 ** k)


_MLFLOW_BAD = str.maketrans({c: "_" for c in "@=+,;()[]{}'\"<>!?#$%&*|\\"})


class MLflowLogger(Logger):
    """One MLflow run per run folder (its id in loggers.json, so a resumed training and the
    evaluation continue it), in the experiment of its study or group."""

    name, package, extra = "mlflow", "mlflow", "mlflow"

    def __init__(self, run_dir: str, stage: str = "train",
                 tracking_uri: str = "sqlite:///outputs/mlflow.db",
                 experiment: str | None = None, artifact_location: str | None = None):
        require(MLflowLogger)
        from mlflow.tracking import MlflowClient

        run = RunFolder(run_dir)
        self.uri, self.stage = _sqlite_absolute(str(tracking_uri)), stage
        with _store_lock(self.uri):
            self.client = _retry(MlflowClient, tracking_uri=self.uri)
            self._start(run, experiment, artifact_location)

    def _start(self, run: RunFolder, experiment: str | None, artifact_location: str | None):
        """The experiment (created if new) and this run folder's MLflow run (continued if
        loggers.json names one in this store)."""
        name = experiment or experiment_name(run.path)
        found = _retry(self.client.get_experiment_by_name, name)
        if found is None:
            if artifact_location is None and self.uri.startswith("sqlite:///"):
                artifact_location = str(Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts")
            where = Path(artifact_location).resolve().as_uri() if artifact_location and \
                "://" not in str(artifact_location) else artifact_location
            try:
                exp_id = _retry(self.client.create_experiment, name, artifact_location=where)
            except Exception:  # noqa: BLE001 - created by a parallel job meanwhile
                exp_id = _retry(self.client.get_experiment_by_name, name).experiment_id
        else:
            exp_id = found.experiment_id
        saved = _ids(run).get("mlflow") or {}
        self.run_id = saved.get("run_id") if saved.get("tracking_uri") == self.uri else None
        if self.run_id is not None:
            try:
                _retry(self.client.get_run, self.run_id)
            except Exception:  # noqa: BLE001 - deleted from the store: start a new one
                self.run_id = None
        if self.run_id is None:
            created = _retry(self.client.create_run, exp_id, run_name=run.name,
                             tags={"run_dir": str(run.path.resolve())})
            self.run_id = created.info.run_id
            _save_id(run, "mlflow", {"tracking_uri": self.uri, "run_id": self.run_id,
                                     "experiment": name})
        elif self.stage == "train":
            _retry(self.client.update_run, self.run_id, status="RUNNING")

    @staticmethod
    def key(tag: str) -> str:
        """MLflow names take letters, digits and _ - . / : and spaces (ema@0.99 -> ema_0.99)."""
        return tag.translate(_MLFLOW_BAD)

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        have = _retry(self.client.get_run, self.run_id).data.params
        new = [Param(self.key(k), str(v)[:6000]) for k, v in params.items()
               if self.key(k) not in have]
        changed = sorted(k for k, v in params.items()
                         if self.key(k) in have and have[self.key(k)] != str(v)[:6000])
        if changed:  # MLflow keeps a parameter's first value (a resume with optim.lr=...)
            log.info("MLflow keeps the first value of %s (changed since)", changed)
        for i in range(0, len(new), 100):
            _retry(self.client.log_batch, self.run_id, params=new[i:i + 100])

    def log_scalars(self, epoch: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(self.key(k), float(v), now, int(epoch)) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            _retry(self.client.log_batch, self.run_id, metrics=metrics[i:i + 1000])

    def log_image(self, name: str, epoch: int, image) -> None:
        _retry(self.client.log_image, self.run_id, image,
               artifact_file=f"{self.key(name)}/epoch_{epoch:04d}.png")

    def close(self, failed: bool = False) -> None:
        if self.stage == "train":
            _retry(self.client.set_terminated, self.run_id,
                   status="FAILED" if failed else "FINISHED")

    def where(self) -> str:
        return f"MLflow run {self.run_id}: mlflow ui --backend-store-uri {self.uri}"


# -- Weights & Biases -------------------------------------------------------------------------
class WandbLogger(Logger):
    """A W&B run per run folder (its id in loggers.json), offline unless WANDB_MODE (or `mode`)
    says otherwise; `wandb sync <run>/wandb/offline-run-*` uploads it later."""

    name, package, extra = "wandb", "wandb", "wandb"

    def __init__(self, run_dir: str, stage: str = "train", project: str = "ema-study",
                 entity: str | None = None, mode: str | None = None, group: str | None = None):
        wandb = require(WandbLogger)
        run = RunFolder(run_dir)
        run.path.mkdir(parents=True, exist_ok=True)
        self.mode = mode or os.environ.get("WANDB_MODE") or "offline"
        saved = _ids(run).get("wandb") or {}
        run_id = saved.get("id") or uuid.uuid4().hex[:8]
        self.run = wandb.init(
            project=project, entity=entity, name=run.name, id=run_id, resume="allow",
            dir=str(run.path), mode=self.mode, group=group or experiment_name(run.path),
            job_type=stage, reinit="create_new",
            settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")
        if saved.get("id") != run_id:
            _save_id(run, "wandb", {"id": run_id, "project": project})
        self.dir = run.path / "wandb"

    def log_params(self, params: dict) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_scalars(self, epoch: int, values: dict[str, float]) -> None:
        self.run.log({**values, "epoch": int(epoch)})

    def log_image(self, name: str, epoch: int, image) -> None:
        import wandb

        self.run.log({name: wandb.Image(image), "epoch": int(epoch)})

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)

    def where(self) -> str:
        if self.mode == "offline":
            return f"W&B offline run in {self.dir}: wandb sync {self.dir}/offline-run-*"
        return f"W&B run {self.run.id} ({self.mode})"


# -- a run's loggers --------------------------------------------------------------------------
def _entries(node) -> list[tuple[str, DictConfig]]:
    if node is None:
        return []
    if not OmegaConf.is_config(node):
        node = OmegaConf.create(node)
    return [(str(k), v) for k, v in node.items() if OmegaConf.is_dict(v) and v.get("_target_")]


def _logger_class(name: str, entry) -> type[Logger]:
    from hydra.utils import get_class

    try:
        return get_class(str(entry._target_))
    except Exception as e:  # noqa: BLE001 - hydra's error types vary
        raise ConfigError(f"logger.{name}._target_={entry._target_!r}: {e}") from None


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
    from .config import build

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
        node = OmegaConf.load(RunFolder(run_dir).config).get("logger")
    except (OSError, ValueError):  # a lone checkpoint's folder: no config, no loggers
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
