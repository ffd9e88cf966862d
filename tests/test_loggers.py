"""The `logger` config group (explore.run.loggers): TensorBoard, MLflow and W&B read back with their
own readers, training and evaluation in one place, and logging that never stops a run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import rows

from explore.core.errors import ConfigError
from explore.evaluate import evaluate
from explore.run.folder import RunFolder
from explore.run.loggers import Logger, epoch_scalars, eval_scalars, experiment_name
from explore.train import train

REPO = Path(__file__).resolve().parents[1]
EMA_STATS = ("mean_abs_delta", "rms_delta", "rel_rms_delta", "max_abs_delta", "share")


def test_tags_of_metrics_and_fid_rows():
    row = {"epoch": 3, "step": 12, "loss": 0.5, "loss_64": 0.3, "lr": 1e-3, "images_per_s": 10.0,
           "ema_share": 0.7, "ema_rms_delta@0.999": 0.01, "phema_share@0.1": 1.0,
           "ema_mean_abs_delta": float("nan")}
    assert epoch_scalars(row) == {
        "train/step": 12.0, "train/loss": 0.5, "train/loss_64": 0.3, "train/lr": 1e-3,
        "train/images_per_s": 10.0, "ema/share/ema": 0.7, "ema/rms_delta/ema@0.999": 0.01,
        "ema/share/phema@0.1": 1.0}  # a non-finite value is left out
    fid_row = {"run": "r", "model": "lift", "seed": 0, "epoch": 2, "step": 8, "weights": "ema",
               "path": "dp_total", "num_steps": 18, "num_images": 512, "fid": 41.5,
               "fid_ci_low": 40.0, "ema_share": 0.6, "ema_share_low": False, "lag_epochs": "",
               "seconds": 3.2, "extractor": "randconv-256"}
    assert eval_scalars(fid_row) == {
        "eval/fid/ema/dp_total": 41.5, "eval/fid_ci_low/ema/dp_total": 40.0,
        "eval/ema_share/ema/dp_total": 0.6, "eval/seconds/ema/dp_total": 3.2}


def test_experiment_is_the_study_or_group(tmp_path):
    assert experiment_name(tmp_path / "outputs" / "study" / "smoke" / "lift-ema0.99-seed0") \
        == "study/smoke"
    assert experiment_name(tmp_path / "outputs" / "train" / "lift-ema0.99-seed0") == "train"
    assert experiment_name(tmp_path / "elsewhere" / "run") == "elsewhere"


def test_tensorboard_shows_training_and_evaluation(tiny_cfg, eval_cfg, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny_cfg("model=lift", "ema.decay=0.9", "logger=tensorboard",
                         "trainer.sample_every=1"), tmp_path / "run")
    evaluate(eval_cfg(f"run_dir={run}", "eval.paths=[diagonal]"))
    acc = EventAccumulator(str(RunFolder(run).tensorboard_dir),
                           size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    expected = {"train/loss", "train/loss_64", "train/loss_32", "train/lr", "train/images_per_s",
                "train/sample_seconds", "eval/fid/raw/diagonal", "eval/fid/ema/diagonal",
                *(f"ema/{s}/ema" for s in EMA_STATS)}
    assert expected <= scalars, expected - scalars
    metrics = rows(run / "metrics.csv")
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2]  # the x axis is the epoch, for training...
    assert [e.value for e in loss] == pytest.approx([float(r["loss"]) for r in metrics])
    share = acc.Scalars("ema/share/ema")
    assert [e.value for e in share] == pytest.approx([1 - 0.9**4, 1 - 0.9**8])
    fid = {r["epoch"]: float(r["fid"]) for r in rows(run / "eval" / "fid.csv")
           if r["weights"] == "raw"}
    events = acc.Scalars("eval/fid/raw/diagonal")  # ...and for evaluation
    assert {str(e.step): e.value for e in events} == pytest.approx(fid)
    assert acc.Tags()["images"] == ["samples"]
    images = acc.Images("samples")
    assert [e.step for e in images] == [1, 2] and images[0].width >= 512  # raw | EMA
    assert "trainer.sample_every" in acc.Tensors("config/text_summary")[0].tensor_proto \
        .string_val[0].decode()


def test_mlflow_runs_are_listed_with_their_metrics_and_resume_the_same_run(tiny_cfg, eval_cfg,
                                                                         tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # the default store: sqlite:///outputs/mlflow.db, from here
    overrides = ["model=baseline", "ema.decay=0.9", "logger=mlflow", "trainer.sample_every=1"]
    run = train(tiny_cfg(*overrides), tmp_path / "outputs" / "demo" / "run")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # evaluation finds the run's store all the same
    evaluate(eval_cfg(f"run_dir={run}"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("demo")
    found = client.search_runs([exp.experiment_id])
    assert [r.info.run_name for r in found] == ["run"] and found[0].info.status == "FINISHED"
    run_id = found[0].info.run_id
    assert json.loads((run / "loggers.json").read_text())["mlflow"]["run_id"] == run_id
    data = found[0].data
    assert data.params["trainer.sample_every"] == "1" and data.params["model._target_"]
    assert {"train/loss", "train/lr", "train/images_per_s", "ema/share/ema",
            "ema/rel_rms_delta/ema", "eval/fid/raw/ddim", "eval/fid/ema/ddim"} <= set(data.metrics)
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2]
    assert sorted(m.step for m in client.get_metric_history(run_id, "eval/fid/ema/ddim")) \
        == [1, 2]
    assert [a.path for a in client.list_artifacts(run_id, "samples")] == [
        "samples/epoch_0001.png", "samples/epoch_0002.png"]
    # resumed training goes on in the same MLflow run
    train(tiny_cfg(*overrides, "trainer.epochs=3", "resume=true"), run)
    assert len(client.search_runs([exp.experiment_id])) == 1
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 3]


@pytest.mark.slow
def test_wandb_offline_writes_its_run_folder(tiny_cfg, tmp_path, monkeypatch, caplog):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    run = train(tiny_cfg("ema.decay=0.9", "logger=wandb"), tmp_path / "run")
    run_id = json.loads((run / "loggers.json").read_text())["wandb"]["id"]
    found = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(found) == 1 and (found[0] / f"run-{run_id}.wandb").stat().st_size > 0
    assert len(list((found[0] / "files" / "media" / "images").glob("samples_*.png"))) == 2
    assert not [r for r in caplog.records if r.name == "explore.loggers" and r.levelname ==
                "WARNING"]  # no call failed (a failing logger is switched off with a warning)


class BrokenLogger(Logger):
    """Fails at its second scalar call (`fail_at`: which method)."""

    name = "broken"
    calls: list = []

    def __init__(self, run_dir: str, stage: str = "train", fail_in: str = "log_scalars"):
        if fail_in == "__init__":
            raise OSError("cannot reach the tracking server (on purpose)")
        self.fail_in = fail_in

    def _call(self, method):
        BrokenLogger.calls.append(method)
        if method == self.fail_in and BrokenLogger.calls.count(method) == 2:
            raise RuntimeError("the logger broke (on purpose)")

    def log_params(self, params):
        self._call("log_params")

    def log_scalars(self, epoch, values):
        self._call("log_scalars")

    def log_image(self, name, epoch, image):
        self._call("log_image")


@pytest.mark.parametrize("fail_in", ["log_scalars", "log_image", "__init__"])
def test_a_failing_logger_is_reported_once_and_switched_off(tiny_cfg, tmp_path, caplog,
                                                            fail_in):
    BrokenLogger.calls = []
    run = train(tiny_cfg("trainer.epochs=3", "trainer.sample_every=1",
                         "+logger.broken._target_=test_loggers.BrokenLogger",
                         f"+logger.broken.fail_in={fail_in}"), tmp_path / "run")
    assert RunFolder(run).checkpoint(3).is_file()  # training finished
    warned = [r for r in caplog.records if r.name == "explore.loggers" and r.levelname ==
              "WARNING"]
    assert len(warned) == 1 and "broken" in warned[0].getMessage()
    if fail_in == "__init__":
        assert BrokenLogger.calls == []
    else:  # nothing more after the failure
        failed_at = BrokenLogger.calls.index(fail_in, BrokenLogger.calls.index(fail_in) + 1)
        assert len(BrokenLogger.calls) == failed_at + 1


@pytest.mark.parametrize("name", ["tensorboard", "mlflow", "wandb"])
def test_an_uninstalled_logger_names_the_install_command(tiny_cfg, tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=rf"pip install -e '\.\[{name}\]'"):
        train(tiny_cfg(f"logger={name}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_evaluation_of_a_run_whose_logger_is_missing_here_goes_on(tiny_cfg, eval_cfg, tmp_path,
                                                                 monkeypatch, caplog):
    pytest.importorskip("tensorboard")
    run = train(tiny_cfg("ema=off", "trainer.epochs=1", "logger=tensorboard"), tmp_path / "run")
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    evaluate(eval_cfg(f"run_dir={run}"))
    assert len(rows(run / "eval" / "fid.csv")) == 1
    assert any("pip install -e '.[tensorboard]'" in r.getMessage() for r in caplog.records)


_NO_OPTIONAL = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorboard", "mlflow", "wandb", "tensorboardX"):
            raise ImportError(f"{name} is not installed (blocked by the test)")
sys.meta_path.insert(0, Block())
sys.path.insert(0, "tests")
from tiny import TINY_TRAIN
from explore.core.config import compose
from explore.train import train
import explore.evaluate, launch.study  # noqa: F401
run = train(compose("train", TINY_TRAIN + ["trainer.epochs=1", "trainer.sample_every=1"]),
            sys.argv[1])
assert (run / "samples" / "epoch_0001.png").is_file()
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorboard", "mlflow", "wandb")))
"""


def test_nothing_imports_an_optional_logger_unless_asked(tmp_path):
    out = subprocess.run([sys.executable, "-c", _NO_OPTIONAL, str(tmp_path / "run")],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
