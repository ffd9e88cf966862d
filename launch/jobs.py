"""What one job of the study does, in its own process: train a run, or evaluate it.

`TrainJob` and `EvalJob` are what submitit pickles and calls in the job process (local or on a
SLURM node). Each composes its config from conf/ with the study's overrides, so a job is the
same as typing `python -m explore.train ...` / `python -m explore.evaluate ...` by hand.

Both are `submitit.helpers.Checkpointable`: when SLURM signals a time limit or a preemption,
submitit calls their `checkpoint()`, which resubmits the same call, and requeues the job (up to
`launcher.max_num_timeout` times for time limits). Training first saves its resume state at the
next step boundary (explore.training.preemption), so the requeued job continues bit for bit;
evaluation starts again at its first missing row. A requeued job notes its restart count in
<run>/logs/<stage>.restarts for the study's progress line.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import submitit

from explore.run.folder import TRAIN_LOG

from .pool import Slot


def _setup(run_dir: Path, slot: Slot, log_name: str | None) -> None:
    """Threads of the slot, and logging to stdout (submitit's <run>/logs/<job>_0_log.out) and,
    for training, to <run>/train.log as a plain `python -m explore.train` run has it."""
    import torch

    torch.set_num_threads(max(1, slot.threads))
    run_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_name:
        handlers.append(logging.FileHandler(run_dir / log_name))
    for h in handlers:
        h.setFormatter(fmt)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.handlers = handlers


def train_job(run_dir: str, overrides: list[str], slot: Slot) -> str:
    """Train (or resume) one run of the study."""
    from explore.core.config import compose
    from explore.train import train

    run = Path(run_dir)
    ranks = _join_ranks()
    _setup(run, slot, TRAIN_LOG if ranks == 0 else None)  # rank 0 writes train.log
    try:
        cfg = compose("train", list(overrides) + [f"device={slot.device_arg}", "resume=true",
                                                  "trainer.progress=false"])
        train(cfg, run, command=list(overrides))
    except Exception as e:  # into <run>/train.log too, then submitit marks the job failed
        logging.getLogger("launch.jobs").error("training failed: %s: %s", type(e).__name__, e)
        raise
    return run_dir


def _join_ranks() -> int:
    """In a job of several tasks (a data-parallel training, on SLURM or this machine), put
    submitit's view of the tasks where torch.distributed reads it (RANK, WORLD_SIZE,
    MASTER_ADDR, ...); returns this task's rank (0 for a one-task job). Each rank then uses the
    GPU of its LOCAL_RANK among the job's visible ones."""
    env = submitit.JobEnvironment()
    if env.num_tasks <= 1:
        return 0
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                          overwrite=True)
    return env.global_rank


def eval_job(run_dir: str, overrides: list[str], slot: Slot) -> str:
    """Evaluate every checkpoint of one run (finished rows are kept)."""
    from explore.core.config import compose
    from explore.evaluate import evaluate

    run = Path(run_dir)
    _setup(run, slot, None)  # evaluate() logs to <run>/eval/evaluate.log itself
    try:
        cfg = compose("evaluate", list(overrides) + [f"run_dir={run}",
                                                     f"device={slot.device_arg}", "progress=false"])
        out = evaluate(cfg)
    except Exception as e:
        logging.getLogger("launch.jobs").error("evaluation failed: %s: %s", type(e).__name__, e)
        raise
    return str(out)


def _note_restarts(run_dir: str, stage: str) -> None:
    """SLURM counts the requeues of a job in SLURM_RESTART_COUNT: keep it for the study."""
    n = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if n:
        from explore.run.folder import RunFolder

        path = RunFolder(run_dir).restarts(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(n))
        logging.getLogger("launch.jobs").info("%s job requeued %d time(s): resuming", stage, n)


class TrainJob(submitit.helpers.Checkpointable):
    """train_job, requeued with the same arguments after a time limit or preemption."""

    def __call__(self, run_dir: str, overrides: list[str], slot: Slot) -> str:
        _note_restarts(run_dir, "training")
        return train_job(run_dir, overrides, slot)


class EvalJob(submitit.helpers.Checkpointable):
    """eval_job, requeued with the same arguments after a time limit or preemption."""

    def __call__(self, run_dir: str, overrides: list[str], slot: Slot) -> str:
        _note_restarts(run_dir, "evaluating")
        return eval_job(run_dir, overrides, slot)


def posthoc_job(run_dir: str, overrides: list[str], slot: Slot) -> str:
    """Reconstruct the study's post-hoc EMA sweep at every checkpoint (existing files kept)."""
    from explore.core.config import compose
    from explore.posthoc import posthoc

    run = Path(run_dir)
    _setup(run, slot, None)
    try:
        written = posthoc(compose("posthoc", list(overrides) + [f"run_dir={run}"]))
    except Exception as e:
        logging.getLogger("launch.jobs").error("post-hoc EMA failed: %s: %s", type(e).__name__,
                                               e)
        raise
    return f"{len(written)} post-hoc EMAs"


class PosthocJob(submitit.helpers.Checkpointable):
    """posthoc_job, requeued with the same arguments after a time limit or preemption."""

    def __call__(self, run_dir: str, overrides: list[str], slot: Slot) -> str:
        _note_restarts(run_dir, "posthoc")
        return posthoc_job(run_dir, overrides, slot)
