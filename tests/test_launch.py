"""The launcher: device slots and queueing, the whole study (resume, failures), and Hydra
multiruns through hydra/launcher=local_devices. Jobs are real submitit LocalExecutor processes."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
from omegaconf import OmegaConf
from tiny import TINY_EVAL, TINY_TRAIN

from explore.core.config import compose
from explore.core.errors import ConfigError
from hydra_plugins.local_devices_launcher.launcher import device_pin, with_slot
from launch import pool
from launch.pool import DeviceQueue, Slot, Ticket, make_slots
from launch.study import run_study, split_overrides

REPO = Path(__file__).resolve().parents[1]

# the job functions below live in this test module, which the job processes cannot import:
# submitit pickles with cloudpickle, so ship them by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# the smallest study that still trains, evaluates raw and EMA weights and reports
TINY_STUDY = [o for o in TINY_TRAIN if o != "trainer.progress=false"] + [
    o for o in TINY_EVAL if o.startswith("eval.") and "extractor" not in o] + [
    "study.cpu_jobs=2"]


def _job(seconds: float, slot: Slot) -> dict:
    """A job that reports where and when it ran."""
    start = time.time()
    time.sleep(seconds)
    return {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "omp": os.environ.get(
        "OMP_NUM_THREADS"), "slot": slot.label, "start": start, "end": time.time()}


def _fail(slot: Slot) -> None:
    raise ValueError("this job fails on purpose")


def _wait(queue: DeviceQueue, limit_s: float = 120) -> None:
    end = time.time() + limit_s
    while queue.busy:
        assert time.time() < end, "jobs did not finish"
        queue.poll()
        time.sleep(0.1)


def test_cpu_slots_default_to_one_job_per_two_cores():
    slots = make_slots("cpu", cores=8)
    assert [s.label for s in slots] == ["cpu#0", "cpu#1", "cpu#2", "cpu#3"]
    assert {s.threads for s in slots} == {2}
    assert len(make_slots("cpu", cpu_jobs=3, cores=8)) == 3
    assert make_slots("cpu", cores=1)[0].threads == 1


def test_gpu_slots_and_missing_gpu(monkeypatch):
    monkeypatch.setattr(pool, "visible_gpus", lambda: [0, 1, 2, 3])
    slots = make_slots([1, 3], cores=8)
    assert [(s.label, s.device_arg, s.env()["CUDA_VISIBLE_DEVICES"]) for s in slots] == [
        ("cuda:1", "0", "1"), ("cuda:3", "0", "3")]
    assert [s.index for s in make_slots("auto", cores=8)] == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match=r"GPU\(s\) \[7\]"):
        make_slots([0, 7])
    with pytest.raises(ConfigError, match="twice"):
        make_slots([1, 1])
    monkeypatch.setattr(pool, "visible_gpus", lambda: [])
    assert make_slots("auto", cores=4)[0].kind == "cpu"


def test_several_gpus_per_run_make_one_slot_each_and_the_job_runs_a_rank_per_gpu(monkeypatch):
    monkeypatch.setattr(pool, "visible_gpus", lambda: list(range(8)))
    slots = make_slots(list(range(8)), cores=16, ranks_per_run=4)  # 2 runs on 8 GPUs
    assert [(s.label, s.env()["CUDA_VISIBLE_DEVICES"], s.ranks, s.device_arg) for s in slots] \
        == [("cuda:0,1,2,3", "0,1,2,3", 4, "auto"), ("cuda:4,5,6,7", "4,5,6,7", 4, "auto")]
    with pytest.raises(ConfigError, match="6 GPU.* do not make runs of study.ranks_per_run=4"):
        make_slots(list(range(6)), ranks_per_run=4)
    cpu = make_slots("cpu", cores=4, ranks_per_run=2)  # gloo ranks on the CPU
    assert [(s.label, s.threads, s.ranks) for s in cpu] == [("cpu#0 x2", 2, 2)]
    cfg = compose("launch_study", ["experiment=smoke", "device=cpu", "study.ranks_per_run=2"])
    from launch.study import training_ranks

    assert training_ranks(cfg) == 2
    slurm = compose("launch_study", ["launcher=slurm", "launcher.nodes=2",
                                     "launcher.tasks_per_node=4"])
    assert training_ranks(slurm) == 8


def test_queue_runs_jobs_on_distinct_devices_and_queues_the_rest(tmp_path):
    # two (fake) GPUs, five jobs: never more than two at once, never two on one GPU
    slots = [Slot("cuda", 0, 1), Slot("cuda", 1, 1)]
    queue = DeviceQueue(slots)
    tickets = [queue.submit(Ticket(f"job{k}", _job, (1.0,), tmp_path / f"job{k}"))
               for k in range(5)]
    assert sum(t.state == "running" for t in tickets) == 2
    assert sum(t.state == "queued" for t in tickets) == 3
    pinned = queue.submit(Ticket("pinned", _job, (0.1,), tmp_path / "pinned", pin=1))
    _wait(queue)
    results = [t.result for t in tickets + [pinned]]
    assert all(t.state == "done" for t in tickets + [pinned])
    for r in results:  # the job saw exactly its slot's GPU
        assert r["cuda"] == r["slot"].removeprefix("cuda:")
        assert r["omp"] == "1"
    assert pinned.result["cuda"] == "1"
    for a in results:  # jobs that overlapped in time ran on different GPUs
        overlapping = [b for b in results if b is not a and b["start"] < a["end"]
                       and a["start"] < b["end"]]
        assert len(overlapping) <= 1
        assert all(b["cuda"] != a["cuda"] for b in overlapping)
    with pytest.raises(ConfigError, match="GPU 5"):
        queue.submit(Ticket("nowhere", _job, (0,), tmp_path / "x", pin=5))


def test_failed_job_is_reported_with_its_log(tmp_path):
    queue = DeviceQueue([Slot("cpu", 0, 1)])
    bad = queue.submit(Ticket("bad", _fail, (), tmp_path / "bad"))
    good = queue.submit(Ticket("good", _job, (0.1,), tmp_path / "good"))
    _wait(queue)
    assert bad.state == "failed" and good.state == "done"  # the others still run
    assert "fails on purpose" in bad.error
    assert "fails on purpose" in Path(bad.log_path).read_text()


def test_overrides_are_split_between_training_and_evaluation():
    train, evaluate = split_overrides(["experiment=smoke", "device=cpu", "trainer.epochs=3",
                                       "eval.num_images=64", "study.seeds=[0,1]",
                                       "launcher=slurm", "data.num_images=100"])
    assert train == ["experiment=smoke", "device=cpu", "trainer.epochs=3", "data.num_images=100"]
    assert evaluate == ["experiment=smoke", "device=cpu", "eval.num_images=64"]


def test_multirun_devices_are_rewritten_to_the_slot():
    assert device_pin(["model=lift", "device=2"]) == (2, False)
    assert device_pin(["device=cuda:3"]) == (3, False)
    assert device_pin(["device=cpu"]) == (None, True)
    assert device_pin(["model=lift"]) == (None, False)
    # inside the job the pinned GPU is the only one visible: cuda:0
    assert with_slot(["model=lift", "device=2"], Slot("cuda", 2, 4)) == ["model=lift", "device=0"]
    assert with_slot(["model=lift"], Slot("cpu", 1, 1)) == ["model=lift", "device=cpu"]


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _study(tmp_path, *extra):
    overrides = TINY_STUDY + [f"study.out={tmp_path}",
                              f"eval.fid.cache_root={tmp_path / 'fidcache'}", *extra]
    return compose("launch_study", overrides), overrides


@pytest.mark.slow
def test_study_trains_evaluates_reports_and_resumes(tmp_path, capsys):
    """... and, logging to MLflow, is one MLflow experiment with a run per job (one study
    run for both claims: each costs a whole study)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg, overrides = _study(tmp_path, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}")
    report, runs = run_study(cfg, overrides, poll_s=0.2)
    assert [r.state for r in runs] == ["done", "done"]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("smoke")  # the study folder (below outputs/: study/smoke)
    found = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in found) == sorted(r.name for r in runs)
    for r in found:  # training and evaluation of each job in its one run
        assert {"train/loss", "ema/share/ema"} <= set(r.data.metrics)
        assert any(k.startswith("eval/fid/ema/") for k in r.data.metrics)
    study = tmp_path / "smoke"
    assert report == study / "report" / "report.md" and report.is_file()
    text = report.read_text()
    assert "Baseline" in text and "DP-Total" in text
    base, lift = (study / r.name for r in runs)
    for run in (base, lift):
        assert (run / "train.log").is_file()
        weights = {row["weights"] for row in _rows(run / "eval" / "fid.csv")}
        assert weights == {"raw", "ema"}
    out = capsys.readouterr().out
    assert "training epoch" in out and f"report: {report}" in out
    assert "study smoke took " in out and "training " in out and "evaluating " in out

    # interrupt LIFT after epoch 1: its epoch-2 snapshot, resume state and rows are gone (it
    # continues from the epoch-1 snapshot)
    (lift / "checkpoints" / "epoch_0002.pt").unlink()
    (lift / "checkpoints" / "last.pt").unlink()
    kept = [r for r in _rows(lift / "eval" / "fid.csv") if r["epoch"] == "1"]
    with open(lift / "eval" / "fid.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(kept[0]))
        w.writeheader()
        w.writerows(kept)
    base_ckpt = base / "checkpoints" / "epoch_0002.pt"
    stamp = base_ckpt.stat().st_mtime_ns
    base_rows = _rows(base / "eval" / "fid.csv")

    report, runs = run_study(cfg, overrides, poll_s=0.2)
    assert [r.state for r in runs] == ["done", "done"]
    assert base_ckpt.stat().st_mtime_ns == stamp                 # finished training not redone
    assert _rows(base / "eval" / "fid.csv") == base_rows         # finished rows kept
    assert "resuming" in (lift / "train.log").read_text()        # LIFT resumed from epoch 1
    assert (lift / "checkpoints" / "epoch_0002.pt").is_file()
    rows = _rows(lift / "eval" / "fid.csv")
    assert [r for r in rows if r["epoch"] == "1"] == kept         # epoch-1 rows kept as they were
    assert {r["epoch"] for r in rows} == {"1", "2"}


def test_a_study_run_trains_on_two_ranks(tmp_path):
    """study.ranks_per_run=2 on the CPU: the training job runs as two submitit tasks (gloo
    ranks, joined through submitit's environment), rank 0 writes the run; then one
    evaluation."""
    cfg, overrides = _study(tmp_path, "study.models=[baseline]", "study.ranks_per_run=2",
                            "study.cpu_jobs=1")
    report, (run,) = run_study(cfg, overrides, poll_s=0.2)
    assert run.state == "done", run.note
    log = (run.dir / "train.log").read_text()
    assert "data-parallel over 2 ranks (gloo): global batch 16, 8 per rank" in log
    assert {r["weights"] for r in _rows(run.dir / "eval" / "fid.csv")} == {"raw", "ema"}
    assert report is not None and report.is_file()


@pytest.mark.slow
def test_failing_job_is_reported_and_the_others_finish(tmp_path, capsys):
    # LIFT's data folder does not exist: its training fails, Baseline's run goes on
    cfg, overrides = _study(tmp_path, "study.models=[baseline,lift]", "study.evaluate=false")
    from launch import study as study_mod

    original = study_mod.build_runs

    def broken_lift(cfg, task_overrides):
        study_dir, runs = original(cfg, task_overrides)
        runs[1].train_overrides += ["data=folder", f"data.root={tmp_path / 'no-such-folder'}"]
        return study_dir, runs

    study_mod.build_runs = broken_lift
    try:
        _, runs = run_study(cfg, overrides, poll_s=0.2)
    finally:
        study_mod.build_runs = original
    assert runs[0].state == "done" and runs[1].state == "failed"
    log_path = runs[1].note.split("log: ")[-1].rstrip(")")
    assert "no-such-folder" in Path(log_path).read_text()
    assert "no-such-folder" in (tmp_path / "smoke" / runs[1].name / "train.log").read_text()
    assert f"failed: {runs[1].name}" in capsys.readouterr().out


@pytest.mark.slow
def test_multirun_through_the_local_devices_launcher(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "explore.train", "-m", "model=baseline,lift", *TINY_TRAIN,
           "data.num_images=32", "trainer.epochs=1", "hydra/launcher=local_devices",
           "hydra.launcher.cpu_jobs=2",
           "hydra.launcher.poll_s=0.2", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    runs = sorted(p.name for p in sweep.iterdir() if (p / "checkpoints").is_dir())
    assert runs == ["baseline-ema0.99-seed0", "lift-ema0.99-seed0"]
    for r in runs:
        assert (sweep / r / "checkpoints" / "epoch_0001.pt").is_file()
    # both jobs started before either finished: they ran side by side on two CPU slots
    lines = log.splitlines()
    first_done = min(i for i, ln in enumerate(lines) if " done on " in ln)
    starts = [i for i, ln in enumerate(lines) if " started on " in ln]
    assert len(starts) == 2 and max(starts) < first_done
    assert {"cpu#0", "cpu#1"} <= {ln.split(" started on ")[1].strip() for ln in lines
                                  if " started on " in ln}


@pytest.mark.slow
def test_multirun_failure_exits_non_zero(tmp_path):
    cmd = [sys.executable, "-m", "explore.train", "-m", "model=lift", "experiment=smoke",
           "device=cpu", "data=folder", f"data.root={tmp_path / 'nowhere'}",
           "hydra/launcher=local_devices", "hydra.launcher.poll_s=0.2",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    # the job's own error reaches the user, naming the folder and what to do
    out = proc.stdout + proc.stderr
    assert f"data.root={tmp_path / 'nowhere'} does not exist: point data.root at a folder" in out


def test_interrupting_the_study_stops_every_job(tmp_path):
    # a study long enough to be caught mid-training, stopped like Ctrl-C would (SIGTERM, as
    # `kill` or a scheduler sends it, takes the same path: the test below)
    sig = signal.SIGINT
    cmd = [sys.executable, "-m", "launch.study", *TINY_STUDY, "trainer.epochs=500",
           f"study.out={tmp_path}", f"eval.fid.cache_root={tmp_path / 'fidcache'}",
           "launcher.poll_s=0.2"]
    # SIGINT as a terminal delivers it: a suite started in the background by a shell without job
    # control (`(./scripts/test &)`) has SIGINT ignored, and a child inherits an ignored signal
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    runs = [tmp_path / "smoke" / f"{m}-ema0.99-seed0" for m in ("baseline", "lift")]
    end = time.time() + 120
    while not all(list((r / "checkpoints").glob("epoch_*.pt")) for r in runs):  # both training
        assert time.time() < end and proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # who is still there: the study, or a job holding its pipe
        study = "still running" if proc.poll() is None else f"exited {proc.returncode}"
        ps = subprocess.run(["ps", "-ewwo", "pid,ppid,stat,etime,args"], capture_output=True,
                            text=True).stdout
        pool._kill_tree(proc.pid)  # the study and its jobs: nothing left running after the test
        pytest.fail(f"no end of output 60 s after {sig!r}: study {study}; processes:\n"
                    + "\n".join(line for line in ps.splitlines() if str(tmp_path) in line))
    assert proc.returncode == 130, out
    assert "every job was stopped" in out
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert left.stdout.strip() == "", f"processes left running: {left.stdout}"
    # nothing half-written is left under a checkpoint's name: the next run resumes from them
    from explore.run.checkpoint import load_checkpoint

    for r in runs:
        for path in (r / "checkpoints").glob("epoch_*.pt"):
            assert load_checkpoint(path)["epoch"] >= 1


def test_sigterm_stops_the_study_as_ctrl_c_does(monkeypatch):
    """`kill <study>` (SIGTERM) raises the KeyboardInterrupt that Ctrl-C raises, wherever the
    study is (run_study then cancels every job, as the test above sees end to end), and the
    study ends with status 130 after taking its jobs' processes with it."""
    from types import SimpleNamespace

    import hydra.core.hydra_config

    from launch import study as study_mod

    reached, killed = [], []

    def run_study(cfg, overrides):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            reached.append("interrupted")  # where run_study's own handler cancels the jobs
            raise
        reached.append("not interrupted")
        return None, []

    fake = SimpleNamespace(overrides=SimpleNamespace(task=["experiment=smoke"]))
    monkeypatch.setattr(hydra.core.hydra_config.HydraConfig, "get", staticmethod(lambda: fake))
    monkeypatch.setattr(study_mod, "run_study", run_study)
    monkeypatch.setattr(study_mod, "kill_descendants", killed.append)
    # (a study that forgot its handler meets this one, not the default that ends pytest)
    old = signal.signal(signal.SIGTERM, lambda *a: reached.append("SIGTERM not handled"))
    try:
        with pytest.raises(SystemExit) as done:
            study_mod._run(compose("launch_study", ["experiment=smoke"]))
    finally:
        signal.signal(signal.SIGTERM, old)
    assert reached == ["interrupted"] and done.value.code == 130
    assert killed == [os.getpid()]


def test_the_study_clock_counts_side_by_side_jobs_once_and_names_the_stage_over_budget():
    from launch.clock import stage_seconds, summary

    tickets = [Ticket("a:training", _job, (), Path("x")), Ticket("b:training", _job, (), Path("x")),
               Ticket("a:evaluating", _job, (), Path("x")), Ticket("b:evaluating", _job, (),
                                                                   Path("x"))]
    for t, (start, end) in zip(tickets, [(0, 90), (5, 95), (95, 300), (96, 400)]):
        t.started, t.ended = start, end
    stages = stage_seconds(tickets)
    assert stages == {"training": 95, "evaluating": 305}  # two jobs side by side count once
    lines = summary("smoke", 412, {**stages, "report": 12}, budget_min=7)
    assert lines == ["study smoke took 6 min 52 s (training 1 min 35 s, evaluating 5 min 05 s, "
                     "report 12 s)"]
    over = summary("smoke", 500, stages, budget_min=7)
    assert len(over) == 2 and "over its preset's budget of 7 min 00 s: evaluating took the " \
        "most, 5 min 05 s (61% of the study)" in over[1]
    assert len(summary("ema_vs_raw", 9000, stages, budget_min=None)) == 1  # no budget stated


def test_study_grid_names_one_run_per_model_decay_and_seed(tmp_path):
    from launch.study import build_runs

    common = ["experiment=smoke", "device=cpu", f"study.out={tmp_path}",
              "study.decays=[0.99,0.999]", "study.seeds=[0,1]"]
    cfg = compose("launch_study", common)
    study_dir, runs = build_runs(cfg, common)
    assert study_dir == tmp_path / "smoke"
    assert sorted(r.name for r in runs) == sorted(
        f"{m}-ema{d}-seed{s}" for m in ("baseline", "lift") for d in (0.99, 0.999)
        for s in (0, 1))
    assert all("device=cpu" in r.train_overrides and "device=cpu" in r.eval_overrides
               for r in runs)
    # an EMA bank: one run per (model, seed) tracking both decays
    bank = common + ["study.ema_bank=true"]
    _, runs = build_runs(compose("launch_study", bank), bank)
    assert sorted(r.name for r in runs) == sorted(
        f"{m}-ema0.99+0.999-seed{s}" for m in ("baseline", "lift") for s in (0, 1))
    assert all("ema=multi" in r.train_overrides for r in runs)
    with pytest.raises(ConfigError, match="model/nope"):
        bad = common + ["study.models=[nope]"]
        build_runs(compose("launch_study", bad), bad)


def test_more_evals_are_further_evaluation_stages_with_their_overrides(tmp_path):
    from launch.study import build_runs

    more = ["experiment=smoke", "device=cpu", f"study.out={tmp_path}", "study.models=[baseline]",
            'study.more_evals=[["eval.fid.extractor=inception-v3-compat","eval.epochs=[1]"],'
            '["eval.num_images=64"]]']
    _, [run] = build_runs(compose("launch_study", more), more)
    stages = run.eval_stages()
    assert list(stages) == ["evaluating", "evaluating 2", "evaluating 3"]
    assert stages["evaluating"] == run.eval_overrides
    assert stages["evaluating 2"][-2:] == ["eval.fid.extractor=inception-v3-compat",
                                           "eval.epochs=[1]"]
    assert stages["evaluating 3"][-1] == "eval.num_images=64"
    assert "device=cpu" in stages["evaluating 2"]  # the user's eval overrides come first
    plain = more[:-1]
    _, [run] = build_runs(compose("launch_study", plain), plain)
    assert list(run.eval_stages()) == ["evaluating"]


def test_study_bema_true_or_its_settings_reach_the_job(tmp_path):
    from launch.study import build_runs

    common = ["experiment=smoke", "device=cpu", f"study.out={tmp_path}", "study.models=[baseline]"]
    for value, expected in (("true", {}), ("{burn_in:256,lag:5.0}", {"burn_in": 256, "lag": 5.0})):
        over = common + [f"study.bema={value}"]
        (run,) = build_runs(compose("launch_study", over), over)[1]
        job = compose("train", run.train_overrides)
        assert "ema=multi" in run.train_overrides and run.name.endswith("+bema-seed0")
        assert OmegaConf.to_container(job.ema.bema) == expected
    with pytest.raises(ConfigError, match="study.bema"):
        bad = common + ["study.bema=256"]
        build_runs(compose("launch_study", bad), bad)


@pytest.mark.slow
def test_ema_length_study_trains_reconstructs_a_sweep_and_evaluates_it(tmp_path, capsys):
    cfg, overrides = _study(tmp_path, "study=ema_length", "study.models=[baseline]",
                            "study.posthoc.sigma_rel=[0.02,0.08,0.2]", "study.smoke_eval=[]",
                            "eval.epochs=[2]")
    report, (run,) = run_study(cfg, overrides, poll_s=0.2)
    assert run.state == "done", run.note
    assert run.name == "baseline-phema0.05+0.1-ema0.99-seed0"
    assert (tmp_path / "ema_length_smoke" / run.name).is_dir()
    names = sorted(p.name for p in (run.dir / "phema" / "reconstructed").iterdir())
    assert names == [f"epoch_{e:04d}_phema@{s}.pt" for e in (1, 2) for s in (0.02, 0.08, 0.2)]
    rows = _rows(run.dir / "eval" / "fid.csv")
    assert sorted(r["weights"] for r in rows) == sorted(
        ["raw", "ema", "phema@0.05", "phema@0.1", "phema@0.02", "phema@0.08", "phema@0.2"])
    by_name = {r["weights"]: r for r in rows}
    assert float(by_name["phema@0.08"]["sigma_rel"]) == pytest.approx(0.08)
    assert float(by_name["raw"]["sigma_rel"]) == 0 and float(by_name["ema"]["sigma_rel"]) > 0
    assert "reconstructing post-hoc EMAs" in capsys.readouterr().out
    assert report is not None and report.is_file()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_last_resort_kill_takes_the_job_processes_too():
    """A controller that ignores the study's interrupt is killed with the processes it started:
    killing it alone would leave its training or evaluation running, orphaned."""
    controller = subprocess.Popen(["bash", "-c", "trap '' INT; sleep 60 & sleep 60 & wait"])
    deadline = time.time() + 10
    while len(pool._descendants(controller.pid)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    children = pool._descendants(controller.pid)
    assert len(children) == 2

    def alive(pid):  # a killed child not yet reaped by init is a zombie: dead
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    pool._kill_tree(controller.pid)
    controller.wait(timeout=5)
    deadline = time.time() + 5
    while any(alive(p) for p in children) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in children)
