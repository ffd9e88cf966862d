import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import TINY_TRAIN

from explore.core.devices import DeviceError
from explore.core.errors import ConfigError
from explore.run import checkpoint as ckpt
from explore.run.checkpoint import CheckpointError, load_checkpoint
from explore.run.folder import RunFolder
from explore.train import train
from explore.training import step as training_mod
from explore.training.step import NonFiniteLossError

REPO = Path(__file__).resolve().parent.parent


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("model", ["baseline", "lift"])
def test_train_writes_run_folder(trained_run, model):
    run = trained_run(f"model={model}", "ema.decay=0.9")
    rows = read_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert [r["step"] for r in rows] == ["4", "8"]
    expected = {"loss", "lr", "seconds", "images_per_s", "ema_mean_abs_delta", "ema_rms_delta",
                "ema_rel_rms_delta", "ema_max_abs_delta", "ema_share"}
    if model == "lift":
        expected |= {"loss_64", "loss_32"}
    assert expected <= set(rows[0])
    assert float(rows[1]["ema_share"]) == pytest.approx(1 - 0.9**8)
    assert [p.name for _, p in RunFolder(run).checkpoints()] == ["epoch_0001.pt", "epoch_0002.pt"]
    state = load_checkpoint(run / "checkpoints" / "epoch_0002.pt")
    assert state["epoch"] == 2 and state["step"] == 8 and state["ema_decay"] == 0.9
    assert set(state["ema_state"]) >= {"decay", "shadow"}
    # a snapshot holds what evaluation reads; the resume state, what continuing needs
    assert {"model_state", "ema_state", "emas", "config", "history"} <= set(state)
    assert not {"optimizer", "lr_schedule", "grad_scaler", "rng"} & set(state)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert {"optimizer", "lr_schedule", "grad_scaler", "rng", "model_state", "emas"} <= set(last)
    assert last["epoch"] == 2 and last["batch"] == 0
    meta = json.loads((run / "run.json").read_text())
    assert meta["model"] == model and meta["ema_decay"] == 0.9 and meta["steps_per_epoch"] == 4


def test_ema_off_has_no_ema_state(trained_run):
    run = trained_run("ema=off", "trainer.epochs=1")
    state = load_checkpoint(run / "checkpoints" / "epoch_0001.pt")
    assert state["ema_state"] is None and state["ema_decay"] is None
    assert "ema_share" not in read_csv(run / "metrics.csv")[0]


@pytest.mark.parametrize("model", ["baseline", "lift"])
def test_resume_is_bitwise_identical(tiny_cfg, trained_run, run_copy, model):
    grid = "trainer.sample_every=1"  # with a sample grid after every epoch
    straight = trained_run(f"model={model}", "ema.decay=0.9", grid)
    half = run_copy(f"model={model}", "ema.decay=0.9", grid, "trainer.epochs=1")
    resumed = train(tiny_cfg(f"model={model}", "ema.decay=0.9", grid, "resume=true"), half)
    a = load_checkpoint(straight / "checkpoints" / "epoch_0002.pt")
    b = load_checkpoint(resumed / "checkpoints" / "epoch_0002.pt")
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), k
    for k, v in a["ema_state"]["shadow"].items():
        assert torch.equal(v, b["ema_state"]["shadow"][k]), k
    assert a["ema_state"]["num_updates"] == b["ema_state"]["num_updates"] == 8
    losses = lambda run: [r["loss"] for r in read_csv(run / "metrics.csv")]  # noqa: E731
    assert losses(straight) == losses(resumed)
    # a raw-vs-EMA sample grid after every epoch (the smoke preset) changed none of it, and
    # shows the same pictures
    from test_watch import panels_of

    a, b = (panels_of(run / "samples" / "epoch_0002.png")[1] for run in (straight, resumed))
    assert list(a) == ["raw", "ema"] and all((a[w] == b[w]).all() for w in a)


def test_resume_of_finished_run_does_nothing(tiny_cfg, run_copy):
    run = run_copy("trainer.epochs=1")
    before = (run / "checkpoints" / "epoch_0001.pt").stat().st_mtime_ns
    train(tiny_cfg("trainer.epochs=1", "resume=true"), run)
    assert (run / "checkpoints" / "epoch_0001.pt").stat().st_mtime_ns == before


def test_interrupted_checkpoint_write_keeps_previous(tiny_cfg, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the epoch-2 checkpoint: write half of it, then "get killed"
            f.write(b"PK\x03\x04 half a checkpoint")
            raise KeyboardInterrupt
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(), run)
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["epoch_0001.pt"]  # no half file under a final name, no temp file left
    assert load_checkpoint(run / "checkpoints" / "epoch_0001.pt")["epoch"] == 1
    # a stray temp file from a hard kill and a truncated newest checkpoint are both passed over
    (run / "checkpoints" / ".epoch_0002.pt.x.tmp").write_bytes(b"junk")
    good = (run / "checkpoints" / "epoch_0001.pt").read_bytes()
    (run / "checkpoints" / "epoch_0002.pt").write_bytes(good[: len(good) // 2])
    train(tiny_cfg("trainer.epochs=3", "resume=true"), run)
    assert load_checkpoint(run / "checkpoints" / "epoch_0003.pt")["step"] == 12


def test_non_finite_loss_stops_and_its_advice_works(tiny_cfg, tmp_path, monkeypatch):
    real = training_mod.loss_fn_for
    calls = {"n": 0}

    def poisoned(model):
        fn = real(model)

        def loss(*a, **kw):
            out = fn(*a, **kw)
            calls["n"] += 1
            if calls["n"] == 6:  # epoch 2, second batch
                out = {k: v * float("nan") for k, v in out.items()}
            return out
        return loss

    monkeypatch.setattr(training_mod, "loss_fn_for", poisoned)
    run = tmp_path / "run"
    overrides = ["ema.decay=0.9"]
    with pytest.raises(NonFiniteLossError) as err:
        train(tiny_cfg(*overrides), run, command=overrides)
    msg = str(err.value)
    assert "epoch 2" in msg and "step 6" in msg and "last.pt (epoch 1 done)" in msg
    lr = float(tiny_cfg().optim.lr) / 2
    advice = f"python -m explore.train ema.decay=0.9 resume=true optim.lr={lr:g} " \
             f"hydra.run.dir={run}"
    assert advice in msg
    # nothing non-finite was saved, and the EMA never saw it
    state = load_checkpoint(run / "checkpoints" / "epoch_0001.pt")
    assert all(torch.isfinite(v).all() for v in state["ema_state"]["shadow"].values())
    assert not (run / "checkpoints" / "epoch_0002.pt").exists()
    assert "non-finite loss" in (run / "train.log").read_text()  # the reason is in the log
    # the advice, as given: continues with the lower learning rate, recorded in the history
    train(tiny_cfg(*advice.split()[3:-1]), run)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr)
    assert last["changes"] == [{"epoch": 1, "step": 4, "setting": "optim.lr",
                                "from": 2 * lr, "to": lr}]
    assert json.loads((run / "run.json").read_text())["changes"] == last["changes"]
    assert [r["lr"] for r in read_csv(run / "metrics.csv")] == [str(2 * lr), str(lr)]


@pytest.mark.parametrize("override, error, match", [
    ("trainer.precision=fp8", ConfigError, "trainer.precision='fp8'"),
    ("optim.lr_schedule=linear", ConfigError, "optim.lr_schedule='linear'"),
    ("trainer.grad_accum=3", ConfigError, "not divisible"),
    # one past the GPUs this machine has (0 here), so it is missing on any machine
    (f"device={torch.cuda.device_count()}", DeviceError, f"GPU {torch.cuda.device_count()}"),
    ("device=gpu0", DeviceError, "not understood"),
    ("data.num_images=8", Exception, "fewer than one batch"),
])
def test_bad_config_values_are_named(tiny_cfg, tmp_path, override, error, match):
    with pytest.raises(error, match=match):
        train(tiny_cfg(override), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_existing_run_needs_resume_and_same_config(tiny_cfg, trained_run):
    run = trained_run("trainer.epochs=1")  # both starts are refused before writing anything
    with pytest.raises(ConfigError, match="resume=true"):
        train(tiny_cfg("trainer.epochs=1"), run)
    with pytest.raises(ConfigError, match="ema"):
        train(tiny_cfg("resume=true", "ema.decay=0.5"), run)


def test_truncated_or_foreign_checkpoint_is_named(tmp_path):
    bad = tmp_path / "epoch_0001.pt"
    bad.write_bytes(b"\x80\x04 not really")
    with pytest.raises(CheckpointError, match=str(bad)):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint of this study"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_cli_help_and_smoke_run(tmp_path):
    env_cmd = [sys.executable, "-m", "explore.train"]
    out = subprocess.run(env_cmd + ["--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0
    assert "model: baseline, lift" in out.stdout and "trainer:" in out.stdout
    run = tmp_path / "cli"
    overrides = [*TINY_TRAIN, "model=lift", "trainer.epochs=1", "trainer.batch_size=32",
                 f"hydra.run.dir={run}"]
    out = subprocess.run(env_cmd + overrides, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert (run / "checkpoints" / "epoch_0001.pt").is_file()
    # a user error exits 1 with the message, not a traceback
    gpu = torch.cuda.device_count()  # one past the last GPU: missing on any machine
    out = subprocess.run(env_cmd + overrides + [f"device={gpu}"], capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 1 and f"GPU {gpu}" in out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_schedule_is_recorded_and_a_run_from_before_resumes_only_with_its_own(tiny_cfg,
                                                                               run_copy):
    run = run_copy("trainer.epochs=1", "diffusion=cosine")
    meta = json.loads((run / "run.json").read_text())
    assert meta["schedule"]["name"] == "cosine" and meta["schedule"]["beta_max"] == 0.999
    path = run / "checkpoints" / "epoch_0001.pt"
    state = torch.load(path, weights_only=False)
    assert state["config"]["diffusion"]["beta_max"] == 0.999
    del state["config"]["diffusion"]  # a checkpoint written before the schedule was recorded
    torch.save(state, path)
    with pytest.raises(ConfigError, match="diffusion"):  # the study's default: refused
        train(tiny_cfg("resume=true"), run)
    train(tiny_cfg("resume=true", "diffusion=cosine"), run)  # its own schedule: continues
    assert [e for e, _ in RunFolder(run).checkpoints()] == [1, 2]
