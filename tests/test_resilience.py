"""Surviving a real run: snapshots and the rolling resume state, mid-epoch resume, the disk
budget, a full disk, keep_last, one writer per run folder, stale temporaries, refused starts."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import TINY_TRAIN

from explore.core.errors import ConfigError
from explore.core.files import DiskFullError
from explore.run import checkpoint as ckpt
from explore.run.checkpoint import load_checkpoint
from explore.run.folder import RunFolder
from explore.run.lock import RunLockedError
from explore.train import train
from explore.training import disk as disk_mod
from explore.training import loop as train_mod
from explore.training.disk import DiskBudgetError

REPO = Path(__file__).resolve().parent.parent


def _same(a: dict, b: dict, keys=("model_state",)) -> None:
    for key in keys:
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name}"


def _shadow(state: dict) -> dict:
    return state["ema_state"]["shadow"]


@pytest.mark.parametrize("model", ["baseline", "lift"])
def test_resume_from_the_middle_of_an_epoch_is_bitwise(tiny_cfg, trained_run, tmp_path,
                                                        monkeypatch, model):
    cfg = tiny_cfg(f"model={model}", "ema.decay=0.9", "checkpoint.resume_every_min=0")
    straight = trained_run(f"model={model}", "ema.decay=0.9", "checkpoint.resume_every_min=0")
    calls = {"n": 0}
    real = train_mod.train_step

    def dies_at_step_6(*a, **kw):  # epoch 2, batch 2: last.pt holds epoch 2 batch 1
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(train_mod, "train_step", dies_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b")
    mid = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert (mid["epoch"], mid["batch"], mid["step"]) == (1, 1, 5)
    monkeypatch.setattr(train_mod, "train_step", real)
    resumed = train(tiny_cfg(f"model={model}", "ema.decay=0.9", "checkpoint.resume_every_min=0",
                             "resume=true"), tmp_path / "b")
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (straight, resumed))
    _same(a, b)
    for name, value in _shadow(a).items():
        assert torch.equal(value, _shadow(b)[name]), name
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
    # and the snapshot of the resumed epoch is the uninterrupted one
    _same(load_checkpoint(straight / "checkpoints" / "epoch_0002.pt"),
          load_checkpoint(resumed / "checkpoints" / "epoch_0002.pt"))


def test_a_corrupt_resume_state_falls_back_to_the_newest_snapshot(tiny_cfg, run_copy, caplog):
    run = run_copy("trainer.epochs=1")
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as by a crash of the copy
    snapshot = load_checkpoint(run / "checkpoints" / "epoch_0001.pt")
    loaded = {}
    real = train_mod.build_training

    def spy(*a, **kw):
        training = real(*a, **kw)
        real_load = training.load_state_dict

        def load(state, source=""):
            real_load(state, source)
            loaded["model"] = {k: v.clone() for k, v in training.model.state_dict().items()}
            loaded["lr"] = training.optimizer.param_groups[0]["lr"]
        training.load_state_dict = load
        return training

    caplog.set_level("INFO", logger="explore.train")
    train_mod.build_training = spy
    try:
        train(tiny_cfg("resume=true"), run)
    finally:
        train_mod.build_training = real
    said = caplog.text
    assert "resume state is unusable" in said and "restarts its moments" in said
    _same(snapshot, {"model_state": loaded["model"]})  # continued from the snapshot's weights
    assert loaded["lr"] == pytest.approx(float(tiny_cfg().optim.lr))
    assert load_checkpoint(last)["epoch"] == 2  # and a whole resume state again at the end


def test_disk_budget_refuses_a_run_that_does_not_fit(tiny_cfg, tmp_path, monkeypatch, caplog):
    run = tmp_path / "run"
    monkeypatch.setattr(disk_mod, "free_bytes", lambda path: 1_000_000)  # 1 MB free
    with pytest.raises(DiskBudgetError) as err:
        train(tiny_cfg(), run)
    msg = str(err.value)
    assert "1.9 MB" in msg and "1.0 MB free" in msg  # both numbers
    assert "checkpoint.every" in msg and "snapshot_dtype=bfloat16" in msg  # what writes less
    assert not run.exists()  # refused before anything was written
    monkeypatch.setattr(disk_mod, "free_bytes", lambda path: 3_000_000)  # fits, > half of it
    caplog.set_level("INFO", logger="explore.train")
    train(tiny_cfg(), run)
    assert "more than half of the free space" in caplog.text
    log = (run / "train.log").read_text()
    assert "disk budget: this run will write about 1.9 MB" in log and "free there: 3.0 MB" in log


def test_snapshots_are_small_and_bfloat16_halves_them(trained_run):
    a = trained_run("trainer.epochs=1", "model=lift")
    b = trained_run("trainer.epochs=1", "model=lift", "checkpoint.snapshot_dtype=bfloat16")
    f32, bf16 = (r / "checkpoints" / "epoch_0001.pt" for r in (a, b))
    weights = sum(v.numel() * 4 for v in load_checkpoint(f32)["model_state"].values())
    assert f32.stat().st_size < 2 * weights + 200_000  # weights + one EMA, no optimizer
    assert bf16.stat().st_size < 0.55 * f32.stat().st_size + 100_000
    assert (a / "checkpoints" / "last.pt").stat().st_size > 1.8 * f32.stat().st_size - 200_000
    state = load_checkpoint(bf16)
    assert state["model_state"]["init_conv.weight"].dtype == torch.bfloat16
    assert _shadow(state)["init_conv.weight"].dtype == torch.bfloat16
    assert state["snapshot_dtype"] == "bfloat16"
    assert torch.equal(_shadow(state)["init_conv.weight"],
                       _shadow(load_checkpoint(f32))["init_conv.weight"].bfloat16())


def test_keep_last_deletes_older_snapshots_but_not_the_kept_ones(trained_run):
    run = trained_run("trainer.epochs=4", "checkpoint.keep_last=2", "checkpoint.keep=[1]")
    assert [e for e, _ in RunFolder(run).checkpoints()] == [1, 3, 4]


def test_a_full_disk_keeps_the_previous_files_and_says_which(tiny_cfg, tmp_path, monkeypatch):
    real_save = torch.save

    def no_space_on_epoch_2(obj, f, *a, **kw):
        if isinstance(obj, dict) and obj.get("epoch") == 2 and "optimizer" not in obj:
            f.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(ckpt.torch, "save", no_space_on_epoch_2)
    run = tmp_path / "run"
    with pytest.raises(DiskFullError) as err:
        train(tiny_cfg(), run)
    msg = str(err.value)
    assert "epoch_0002.pt failed: the file system at /" in msg and "it needs" in msg
    assert "The previous" in msg
    folder = run / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_0001.pt", "last.pt"]  # no .tmp
    load_checkpoint(folder / "epoch_0001.pt")
    assert "DiskFullError: writing" in (run / "train.log").read_text()


def test_a_really_full_file_system(tiny_cfg, tmp_path, monkeypatch):
    """The same on a real 2 MB tmpfs, filled up after the first epoch (root only)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs",
                                            str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        real = train_mod.Checkpointer.save_snapshot

        def fill_then_save(self, state):
            if state.epoch == 2:  # another process filled the disk in the meantime
                filler = mnt / "filler"
                with open(filler, "wb") as f:
                    f.write(b"\0" * max(0, shutil.disk_usage(mnt).free - 100_000))
            return real(self, state)

        monkeypatch.setattr(train_mod.Checkpointer, "save_snapshot", fill_then_save)
        with pytest.raises(DiskFullError, match=f"the file system at {mnt} is full"):
            train(tiny_cfg("ema=off"), mnt / "run")
        names = sorted(p.name for p in (mnt / "run" / "checkpoints").iterdir())
        assert names == ["epoch_0001.pt", "last.pt"]
        load_checkpoint(mnt / "run" / "checkpoints" / "epoch_0001.pt")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_stale_temporaries_of_killed_writers_are_removed(tiny_cfg, run_copy, caplog):
    run = run_copy("trainer.epochs=1")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = [run / "checkpoints" / f".epoch_0002.pt.{dead}.k2j4h1x0.tmp",
             run / "checkpoints" / ".last.pt.oldstyle.tmp", run / f".metrics.csv.{dead}.ab.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 4096)
    caplog.set_level("INFO", logger="explore.train")
    train(tiny_cfg("resume=true"), run)
    assert not any(p.exists() for p in stale)
    assert "removed 3 temporary files (12.3 KB) left by an interrupted write" in caplog.text


def test_a_second_writer_stops_at_once_and_a_dead_ones_lock_is_taken_over(tiny_cfg, run_copy,
                                                                          caplog):
    run = run_copy("trainer.epochs=1")
    before = (run / "config.yaml").read_text()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "train.lock").write_text(json.dumps({"host": os.uname().nodename,
                                                    "pid": holder.pid, "since": "earlier"}))
        with pytest.raises(RunLockedError) as err:
            train(tiny_cfg("resume=true", "trainer.epochs=2"), run)
        assert f"process {holder.pid} on {os.uname().nodename}" in str(err.value)
        assert (run / "config.yaml").read_text() == before  # nothing written
        assert [e for e, _ in RunFolder(run).checkpoints()] == [1]
    finally:
        holder.kill()
        holder.wait()
    caplog.set_level("WARNING", logger="explore.train")
    train(tiny_cfg("resume=true", "trainer.epochs=2"), run)  # the holder is gone: stale
    assert f"taking over the stale lock {run / 'train.lock'} of process {holder.pid}" \
        in caplog.text
    assert not (run / "train.lock").exists()  # released at the end


def test_a_refused_or_failed_start_changes_nothing_on_disk(tmp_path):
    cmd = [sys.executable, "-m", "explore.train", *TINY_TRAIN, "trainer.epochs=1",
           "data.num_images=32"]
    run = tmp_path / "lift"
    done = subprocess.run(cmd + ["model=lift", f"hydra.run.dir={run}"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    files = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    refused = subprocess.run(cmd + ["model=baseline", "resume=true", "trainer.epochs=2",
                                    f"hydra.run.dir={run}"], cwd=REPO, capture_output=True,
                             text=True)
    assert refused.returncode == 1 and "config differs" in refused.stdout + refused.stderr
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == files  # untouched
    assert "LiftUNet" in (run / "config.yaml").read_text() and not (run / ".hydra").exists()
    failed = subprocess.run(cmd + ["data=folder", f"data.root={tmp_path / 'nowhere'}",
                                   f"hydra.run.dir={tmp_path / 'new'}"], cwd=REPO,
                            capture_output=True, text=True)
    assert failed.returncode == 1 and "does not exist" in failed.stdout + failed.stderr
    assert not (tmp_path / "new").exists()  # no stray run folder


def test_evaluating_a_lone_checkpoint_checks_the_model_and_reads_its_epoch(trained_run,
                                                                           tmp_path):
    from explore import evaluate as ev
    from explore.core.config import compose

    run = trained_run("model=baseline", "trainer.epochs=1")
    lone = tmp_path / "mine.pt"  # a name without the epoch
    shutil.copy(run / "checkpoints" / "epoch_0001.pt", lone)
    common = ["device=cpu", "progress=false", "eval.num_images=16", "eval.num_steps=2",
              "eval.fid.extractor=randconv-256", f"eval.fid.cache_root={tmp_path / 'fid'}",
              f"checkpoint={lone}", f"out_dir={tmp_path / 'scored'}", "eval.weights=[raw]"]
    with pytest.raises(ConfigError, match="model=LiftUNet was asked for, but .*mine.pt holds a "
                                          "BaselineUNet"):
        ev.evaluate(compose("evaluate", common + ["model=lift"]))
    with pytest.warns(UserWarning):
        out = ev.evaluate(compose("evaluate", common))
    assert out.read_text().splitlines()[1].split(",")[6] == "1"  # the epoch the file holds
