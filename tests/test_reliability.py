"""Nothing lost when two commands meet, and every run says what made it (issue 20): two
evaluations of one run folder keep both their rows, several trainings racing for a dead
process's lock let exactly one through, run.json and every evaluation row record their
environment, files honour the umask, fall-backs reach train.log and the run's history, bad
optimizer values fail in one line, an unreadable checkpoint does not stop the others, and a
killed evaluation's temporaries are removed by the next."""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import TINY_EVAL, TINY_TRAIN, rows

from explore import evaluate as ev
from explore.core.config import compose
from explore.run import environment as envmod
from explore.run.checkpoint import CheckpointError
from explore.run.info import read_run_info
from explore.run.lock import RunLock, RunLockedError
from explore.run.results import ResultsFile, fid_row_key
from explore.train import train
from explore.training import loop as train_mod

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

pytestmark = pytest.mark.filterwarnings("ignore:eval.num_images")


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    return int(done.stdout)


def _stale_lock(run: Path) -> None:
    (run / "train.lock").write_text(json.dumps({"host": os.uname().nodename,
                                                "pid": _dead_pid(), "since": "earlier"}))


@pytest.fixture
def run3(run_copy):
    """A Baseline run with three epochs' snapshots (the test's own copy, to evaluate into)."""
    return run_copy("model=baseline", "ema.decay=0.9", "data.num_images=32", "trainer.epochs=3",
                    name="baseline")


# -- 1. two evaluations of one run folder ---------------------------------------------------------
def test_two_evaluations_started_together_keep_every_row(run3, tmp_path):
    cache = tmp_path / "fidcache"
    common = [sys.executable, "-m", "explore.evaluate", f"run_dir={run3}", *TINY_EVAL,
              f"eval.fid.cache_root={cache}", "eval.grid=false"]
    procs = [subprocess.Popen(common + [f"eval.seeds=[{seed}]"], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for seed in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    made = [r for r in rows(run3 / "eval" / "fid.csv") if r["sample_seed"] in ("0", "1")]
    # 3 epochs x (raw, ema) x 2 seeds: every row either process computed is on disk
    assert sorted((int(r["epoch"]), r["weights"], int(r["sample_seed"])) for r in made) == \
        sorted((e, w, s) for e in (1, 2, 3) for w in ("ema", "raw") for s in (0, 1))
    assert len({fid_row_key(r) for r in made}) == len(made) == 12


def _add_rows(path: str, seed: int, count: int, barrier) -> None:
    results = ResultsFile(path)  # read once at start, as an evaluation does
    barrier.wait()
    for epoch in range(count):
        results.add({"epoch": epoch, "weights": "raw", "path": "ddim", "sample_seed": seed,
                     "num_steps": 4, "num_images": 8, "extractor": "x", "extractor_weights": "",
                     "schedule": "s",
                     "final_step": "zero", "subset_seed": 0, "fid": 1.0})


def test_results_file_merges_rows_of_writers_that_read_it_before_the_others_wrote(tmp_path):
    """The same at the file level, many writes each: a read-once, rewrite-from-memory file
    keeps only the last writer's rows."""
    path = str(tmp_path / "eval" / "fid.csv")
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_add_rows, args=(path, seed, 25, barrier)) for seed in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert len(rows(path)) == 100


# -- 2. racing for a stale lock -------------------------------------------------------------------
def _take(path: str, barrier, results) -> None:
    lock = RunLock(path)
    barrier.wait()
    try:
        lock.acquire()
    except RunLockedError:
        results.put("refused")
        return
    results.put("took")
    time.sleep(0.3)  # a run, holding it while the others try
    lock.release()


def test_only_one_of_several_processes_takes_over_a_stale_lock(tmp_path):
    ctx = multiprocessing.get_context("fork")
    path = tmp_path / "train.lock"
    for round_ in range(25):
        _stale_lock(tmp_path)
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_take, args=(str(path), barrier, results))
                 for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        got = sorted(results.get(timeout=5) for _ in procs)
        assert got == ["refused"] * 3 + ["took"], f"round {round_}: {got}"
        assert not path.exists()  # the winner released it


def test_a_live_lock_holder_is_named_and_its_lock_released_by_the_os_when_it_dies(tmp_path):
    path = tmp_path / "train.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from explore.run.lock import RunLock; "
         f"RunLock({str(path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"process {holder.pid} on"):
            RunLock(path).check()
        with pytest.raises(RunLockedError, match=f"process {holder.pid} on"):
            RunLock(path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(path)  # killed: its file is left, its flock gone
    lock.acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


@pytest.mark.slow
def test_three_trainings_racing_on_a_stale_lock_train_once(tmp_path):
    overrides = [*TINY_TRAIN, "model=baseline", "data.num_images=32", "checkpoint.every=5"]
    cmd = [sys.executable, "-m", "explore.train", *overrides]
    run = tmp_path / "run"  # its first epoch in this process (the race is what the test is about)
    train(compose("train", [*overrides, "trainer.epochs=1"]), run)
    for attempt, epochs in enumerate((12, 24)):  # long enough to outlast the others' start
        _stale_lock(run)
        procs = [subprocess.Popen(cmd + [f"trainer.epochs={epochs}", "resume=true",
                                         f"hydra.run.dir={run}"], cwd=REPO, env=ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(3)]
        outs = [p.communicate(timeout=600)[0] for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 1, 1], f"attempt {attempt}: " + "\n---\n".join(outs)
        refused = [o for o, p in zip(outs, procs) if p.returncode == 1]
        assert all("is being t" in o and "Traceback" not in o for o in refused), refused
        log = (run / "train.log").read_text()
        assert log.count("done: ") == attempt + 2  # one per successful start, never two
        assert log.count("taking over the stale lock") == attempt + 1


# -- 3. what made a run ---------------------------------------------------------------------------
def _git_head() -> str | None:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def test_run_json_records_the_environment_and_keeps_it_across_resumes(tiny_cfg, tmp_path,
                                                                     monkeypatch, caplog):
    overrides = ["trainer.epochs=1"]
    run = train(tiny_cfg(*overrides), tmp_path / "run", command=overrides)
    info = json.loads((run / "run.json").read_text())
    env = info["environment"]
    assert env["overrides"] == overrides  # what a study job or SLURM worker was asked to do
    assert env["python"] == platform.python_version()
    assert env["torch"] == str(torch.__version__)
    assert env["git_commit"] == _git_head() and isinstance(env["git_dirty"], bool)
    assert set(env["packages"]) == {"torch", "torchvision", "torch-fidelity", "numpy", "scipy"}
    assert env["packages"]["numpy"] == __import__("numpy").__version__
    assert env["hostname"] == os.uname().nodename and env["device_name"]
    assert env["command"] == shlex.join(sys.orig_argv)  # this process's command line
    assert [e["event"] for e in info["history"]] == ["start"]
    assert info["history"][0]["environment"] == env["id"]

    # resumed in the same environment: one more event, no new environment
    train(tiny_cfg("trainer.epochs=2", "resume=true"), run)
    info = read_run_info(run)
    assert [e["event"] for e in info.history] == ["start", "resume"]
    assert len(info.environments) == 1 and info.environment["id"] == env["id"]

    # resumed with another torch: appended, warned, the first environment kept as the run's
    real = envmod.describe_environment

    def other_torch(device=None):
        record = real(device)
        record["torch"] = "9.9.9"
        record["id"] = envmod.environment_id(record)
        return record

    monkeypatch.setattr(train_mod, "describe_environment", other_torch)
    caplog.set_level("INFO", logger="explore.train")
    train(tiny_cfg("trainer.epochs=3", "resume=true"), run)
    info = read_run_info(run)
    assert [e["torch"] for e in info.environments] == [str(torch.__version__), "9.9.9"]
    assert info.environments[1]["since_epoch"] == 2
    assert info.environment["id"] == env["id"]
    assert info.history[-1]["environment"] == info.environments[1]["id"] != env["id"]
    assert f"trained so far with torch {torch.__version__} and resumes with torch 9.9.9" \
        in caplog.text
    # and in the checkpoints: a lost run.json does not lose the history
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert [e["event"] for e in saved["events"]] == ["start", "resume", "resume"]


def test_every_evaluation_row_names_its_environment(run3, eval_cfg):
    ev.evaluate(eval_cfg(f"run_dir={run3}", "eval.epochs=[3]", "eval.weights=[raw]",
                         "eval.seeds=[5]"))
    made = [r for r in rows(run3 / "eval" / "fid.csv") if r["sample_seed"] == "5"]
    assert made and all(r["environment"].startswith("env-") for r in made)
    known = json.loads((run3 / "eval" / "environments.json").read_text())
    record = known[made[0]["environment"]]
    assert record["torch"] == str(torch.__version__) and record["git_commit"] == _git_head()
    assert envmod.environment_id(record) == made[0]["environment"]


def test_the_environment_id_ignores_the_host_and_command_but_not_versions():
    record = envmod.describe_environment("cpu")
    same = {**record, "hostname": "elsewhere", "command": "other"}
    assert envmod.environment_id(same) == record["id"]
    for key, value in (("torch", "0.0"), ("git_commit", "abc"), ("device_name", "GPU X"),
                       ("packages", {**record["packages"], "numpy": "0.1"})):
        assert envmod.environment_id({**record, key: value}) != record["id"], key
    assert envmod.differences(record, {**record, "packages": {**record["packages"],
                                                              "scipy": "0.1"}}) == \
        [f"scipy: {record['packages']['scipy']} -> 0.1"]


# -- 5. the smaller holes -------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_honour_the_umask(tiny_cfg, eval_cfg, tmp_path, umask):
    old = os.umask(umask)
    try:
        run = train(tiny_cfg("model=baseline", "trainer.epochs=1", "data.num_images=32",
                             "trainer.sample_every=1"), tmp_path / "run")
        ev.evaluate(eval_cfg(f"run_dir={run}", "eval.weights=[raw]"))
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    for name in ("run.json", "config.yaml", "metrics.csv", "train.log", "eval/fid.csv",
                 "eval/environments.json", "checkpoints/epoch_0001.pt", "checkpoints/last.pt",
                 "samples/epoch_0001.png"):
        mode = stat.S_IMODE((run / name).stat().st_mode)
        assert mode == want, f"{name}: {oct(mode)} != {oct(want)}"


def test_a_fallback_on_resume_is_written_to_train_log_and_the_history(tiny_cfg, run_copy):
    run = run_copy("trainer.epochs=1")
    (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    train(tiny_cfg("trainer.epochs=2", "resume=true"), run)
    log = (run / "train.log").read_text()
    assert "the resume state is unusable" in log and "AdamW restarts its moments" in log
    events = read_run_info(run).history
    assert [e["event"] for e in events] == ["start", "fallback", "fallback", "resume"]
    assert "resume state is unusable" in events[1]["message"]
    assert events[3]["from"] == "epoch_0001.pt"


@pytest.mark.parametrize("bad, named", [("optim.lr=-1", "optim.lr=-1"),
                                        ("optim.lr=nan", "optim.lr=nan"),
                                        ("optim.optimizer.weight_decay=-0.1",
                                         "optim.optimizer.weight_decay=-0.1")])
def test_a_bad_optimizer_value_is_one_clear_error(tmp_path, bad, named):
    done = subprocess.run([sys.executable, "-m", "explore.train", *TINY_TRAIN, bad,
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 1 and named in out and "Traceback" not in out, out
    assert len(out.strip().splitlines()) <= 2, out
    assert not (tmp_path / "run").exists()


def test_an_unreadable_checkpoint_is_named_after_the_others_are_scored(run3, eval_cfg,
                                                                      tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(run3, run, ignore=shutil.ignore_patterns("eval"))
    first = run / "checkpoints" / "epoch_0001.pt"
    first.write_bytes(first.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match="epoch_0001.pt") as err:
        ev.evaluate(eval_cfg(f"run_dir={run}", "eval.weights=[raw]"))
    assert "1 of 3 checkpoint(s) could not be read" in str(err.value)
    assert sorted(int(r["epoch"]) for r in rows(run / "eval" / "fid.csv")) == [2, 3]
    # the newest unreadable too: set up from the next one, the others still scored
    newest = run / "checkpoints" / "epoch_0003.pt"
    newest.write_bytes(b"")
    with pytest.raises(CheckpointError, match="2 of 3") as err:
        ev.evaluate(eval_cfg(f"run_dir={run}", "eval.weights=[raw]", "eval.seeds=[7]"))
    assert "epoch_0003.pt" in str(err.value)
    assert [int(r["epoch"]) for r in rows(run / "eval" / "fid.csv")
            if r["sample_seed"] == "7"] == [2]


def test_temporaries_of_a_killed_evaluation_are_removed_by_the_next(run3, eval_cfg):
    dead = _dead_pid()
    writer = subprocess.Popen(["sleep", "60"])  # a live writer
    live = writer.pid
    stale = [run3 / "eval" / f".fid.csv.{dead}.x1.tmp",
             run3 / "eval" / "grids" / f".epoch_0001_raw_ddim_s0.png.{dead}.x2.tmp",
             run3 / "eval" / "heatmaps" / f".h.npz.{dead}.x3.tmp"]
    kept = run3 / "eval" / f".fid.csv.{live}.x4.tmp"  # a live writer's: never touched
    for p in [*stale, kept]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\0" * 100)
    ev.evaluate(eval_cfg(f"run_dir={run3}", "eval.epochs=[1]", "eval.weights=[raw]"))
    assert not any(p.exists() for p in stale) and kept.exists()
    writer.kill()
    writer.wait()
    assert "removed 3 temporary files" in (run3 / "eval" / "evaluate.log").read_text()
    kept.unlink()
