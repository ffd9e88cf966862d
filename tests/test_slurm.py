"""The study and a Hydra multirun on a real one-node SLURM cluster that the tests start
(tests/slurm_cluster.py). CPU jobs: the test machine has no GPU, so gpus_per_node=0."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_launch import TINY_STUDY
from tiny import TINY_TRAIN

from explore.core.config import compose
from launch.study import run_study

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
SLURM = ["launcher=slurm", "launcher.partition=debug", "launcher.gpus_per_node=0",
         "launcher.cpus_per_task=1", "launcher.mem_gb=null", "launcher.timeout_min=10",
         "launcher.poll_s=1"]


def test_study_runs_on_slurm(slurm_cluster, tmp_path):
    """Each run's training is one SLURM job of two tasks, data-parallel (gloo ranks joined
    through submitit's environment), then an evaluation job of one task."""
    overrides = TINY_STUDY + SLURM + [f"study.out={tmp_path}", "launcher.tasks_per_node=2",
                                      f"eval.fid.cache_root={tmp_path / 'fidcache'}"]
    report, runs = run_study(compose("launch_study", overrides), overrides, poll_s=1)
    assert [r.state for r in runs] == ["done", "done"], [r.note for r in runs]
    for run in runs:
        # a training job then an evaluation job, each a SLURM job of its own
        ids = [t.extra["slurm_job_id"] for t in run.tickets]
        assert len(ids) == 2 and all(i.isdigit() for i in ids) and ids[0] != ids[1]
        with open(run.dir / "eval" / "fid.csv") as f:
            assert {r["weights"] for r in csv.DictReader(f)} == {"raw", "ema"}
        assert (run.dir / "checkpoints" / "epoch_0002.pt").is_file()
        assert "data-parallel over 2 ranks (gloo)" in (run.dir / "train.log").read_text()
    assert report is not None and report.is_file()


def test_multirun_through_submitit_slurm(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "explore.train", "-m", "model=baseline,lift", *TINY_TRAIN,
           "data.num_images=32", "trainer.epochs=1", "hydra/launcher=submitit_slurm",
           "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
           "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "SLURM_CONF": str(slurm_cluster.conf)})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for name in ("baseline-ema0.99-seed0", "lift-ema0.99-seed0"):
        assert (sweep / name / "checkpoints" / "epoch_0001.pt").is_file()
    # the jobs ran under SLURM: submitit kept their sbatch scripts
    assert list((sweep / ".submitit").rglob("*_submission.sh"))


def test_a_job_past_its_time_limit_finishes_through_requeues(slurm_cluster, tmp_path, capsys,
                                                            monkeypatch):
    """Training that lasts past SLURM's warning in a 1-minute limit: SLURM signals the job
    before the limit, it saves its resume state at a step boundary and is requeued (submitit),
    then finishes; the final weights equal an uninterrupted run's bit for bit, and the report is
    made. The training lasts by waiting, not computing: a logger sleeps at each epoch's end
    (tests/paced_logger.py; a logger only reads, so the weights are the plain training's)."""
    import torch

    from explore.run.checkpoint import load_checkpoint
    from launch.study import build_runs

    # SLURM signals a job `signal_delay_s` before its limit, or up to 30 s earlier (slurmctld
    # looks every 30 s): with 20 s in a 1-minute limit, 10-40 s after an allocation starts
    # (seen here: ~12 s for each allocation after a requeue). 20 epochs of 2.5 s outlast that.
    # (30 s can signal a job in its first second, before submitit's handler is in place, and
    # kill it: seen with the evaluation job.)
    epochs = 20
    overrides = TINY_STUDY + SLURM + [
        f"study.out={tmp_path}", f"eval.fid.cache_root={tmp_path / 'fidcache'}",
        "study.models=[baseline]", f"trainer.epochs={epochs}", f"checkpoint.every={epochs}",
        f"eval.epochs=[{epochs}]", "launcher.timeout_min=1", "launcher.signal_delay_s=20",
        "+logger.paced._target_=paced_logger.PacedLogger", "+logger.paced.seconds=2.5"]
    # the logger's module, for the jobs (SLURM hands them this environment) and the reference
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")])))
    cfg = compose("launch_study", overrides)
    _, (run,) = build_runs(cfg, overrides)
    # the same training, uninterrupted, meanwhile (it waits at its epochs' ends too)
    ref = tmp_path / "uninterrupted"
    script = ("import sys, torch; torch.set_num_threads(1); "
              "from explore.core.config import compose; from explore.train import train; "
              "train(compose('train', sys.argv[2:]), sys.argv[1])")
    reference = subprocess.Popen([sys.executable, "-c", script, str(ref), *run.train_overrides,
                                  "device=cpu", "trainer.progress=false"], cwd=REPO)
    try:
        report, (done,) = run_study(cfg, overrides, poll_s=1)
    finally:
        assert reference.wait(timeout=900) == 0
    assert done.state == "done", done.note
    restarts = int((done.dir / "logs" / "training.restarts").read_text())
    assert restarts >= 1
    out = capsys.readouterr().out
    assert "requeued (" in out
    with capsys.disabled():  # the count, for the record (pytest -s or -rP shows it)
        print(f"\ntraining job requeued {restarts} time(s) before it finished")
    assert report is not None and report.is_file()
    a = load_checkpoint(ref / "checkpoints" / f"epoch_{epochs:04d}.pt")
    b = load_checkpoint(done.dir / "checkpoints" / f"epoch_{epochs:04d}.pt")
    for key in ("model_state",):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), name
    for name, value in a["ema_state"]["shadow"].items():
        assert torch.equal(value, b["ema_state"]["shadow"][name]), name
    assert a["step"] == b["step"] == epochs * 4


def test_a_job_killed_by_a_signal_it_does_not_catch_fails_instead_of_hanging(slurm_cluster,
                                                                           tmp_path):
    """This cluster keeps no accounting (no sacct), as many do not: submitit learns a job's end
    only from its result file, which a job killed by SIGKILL never writes. The queue looks such
    a job up with squeue and fails it, naming it (seen before: a study waiting forever)."""
    import time

    from launch.pool import Ticket
    from launch.slurm import SlurmQueue

    def _sleep_then_return(seconds: float, slot) -> str:  # nested: pickled by value, so the
        time.sleep(seconds)                               # job needs no tests/ on its path
        return "finished"

    queue = SlurmQueue({"partition": "debug", "gpus_per_node": 0, "timeout_min": 5})
    queue.VANISHED_CHECK_S = 1
    ticket = queue.submit(Ticket("killed:training", _sleep_then_return, (300,), tmp_path))
    job_id = str(ticket.job.job_id)
    deadline = time.monotonic() + 120
    while "RUNNING" not in subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"],
                                          capture_output=True, text=True).stdout:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=KILL", "--full", job_id], check=True)
    deadline = time.monotonic() + 60  # (it ends in seconds)
    ended = []
    while not ended:
        assert time.monotonic() < deadline, "the killed job was never seen to end"
        ended = queue.poll()
        time.sleep(0.5)
    assert ended == [ticket] and ticket.state == "failed", ticket.error
    assert f"SLURM job {job_id} ended without a result" in ticket.error
    assert not queue.busy
