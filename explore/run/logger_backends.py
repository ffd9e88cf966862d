"""The loggers of the `logger` config group (conf/logger/), each imported only when asked for:
TensorBoard (`tensorboard`), MLflow (`mlflow`) and Weights & Biases (`wandb`). The interface,
the run's set of loggers and the tags are in explore.run.loggers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from pathlib import Path

from explore.run.folder import RunFolder
from explore.run.loggers import Logger, experiment_name, ids, require, save_id

log = logging.getLogger("explore.loggers")

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
        saved = (ids(run).get("mlflow") or {}).get("tracking_uri")
        relative = str(tracking_uri).startswith("sqlite:///") and \
            not str(tracking_uri).startswith("sqlite:////")
        # a relative store is the one this run already logs into (evaluation and resumed
        # training may start in another working folder), else resolved here
        self.uri = saved if relative and saved else _sqlite_absolute(str(tracking_uri))
        self.stage = stage
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
        saved = ids(run).get("mlflow") or {}
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
            save_id(run, "mlflow", {"tracking_uri": self.uri, "run_id": self.run_id,
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
        saved = ids(run).get("wandb") or {}
        run_id = saved.get("id") or uuid.uuid4().hex[:8]
        self.run = wandb.init(
            project=project, entity=entity, name=run.name, id=run_id, resume="allow",
            dir=str(run.path), mode=self.mode, group=group or experiment_name(run.path),
            job_type=stage, reinit="create_new",
            settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")
        if saved.get("id") != run_id:
            save_id(run, "wandb", {"id": run_id, "project": project})
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
