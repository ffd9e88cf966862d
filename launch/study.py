"""The whole study with one command: train every job, evaluate every checkpoint, write the report.

    python -m launch.study                                   # conf/study/ema_vs_raw.yaml
    python -m launch.study experiment=smoke device=cpu       # minutes on a CPU
    python -m launch.study study.devices=[0,1,2,3] study.seeds=[0,1,2] study.decays=[0.999,0.9999]
    python -m launch.study launcher=slurm launcher.partition=gpu launcher.timeout_min=2880
    python -m launch.study logger=mlflow     # one MLflow experiment per study, a run per job

The grid is model x decay x seed (conf/study/*.yaml). Every run lives in
<study.out>/<study.name>/<model>-ema<decay>-seed<seed>/ with its own logs; re-running the same
command resumes: finished training is not redone, unfinished runs continue from their newest
checkpoint, finished evaluation rows are kept. A failed job is reported with its log and the
study exits non-zero after the others finish; Ctrl-C stops every job.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from explore.core.config import compose, ema_tag
from explore.core.errors import ConfigError
from explore.run.folder import RunFolder

from .clock import stage_seconds, summary
from .jobs import EvalJob, PosthocJob, TrainJob
from .pool import DeviceQueue, Ticket, kill_descendants, make_slots

log = logging.getLogger("launch.study")

# command-line keys that belong to the launcher, not to the jobs
LAUNCH_KEYS = ("study", "launcher", "hydra")


@dataclass
class Run:
    name: str
    dir: Path
    model: str
    train_overrides: list[str]
    eval_overrides: list[str]
    epochs: int
    posthoc_overrides: list[str] | None = None  # a post-hoc EMA sweep between train and eval
    # further evaluations after the first (study.more_evals), e.g. another extractor at some
    # epochs: stages "evaluating 2", "evaluating 3", ...
    more_evals: list[list[str]] = field(default_factory=list)
    tickets: list[Ticket] = field(default_factory=list)
    state: str = "queued"
    note: str = ""

    def eval_stages(self) -> dict[str, list[str]]:
        """The evaluation stages in order, each with its overrides: "evaluating", then
        "evaluating 2", ... for study.more_evals."""
        return {"evaluating": self.eval_overrides,
                **{f"evaluating {k}": more for k, more in enumerate(self.more_evals, 2)}}

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.dir)

    def trained(self) -> bool:
        found = self.folder.checkpoints()
        return bool(found) and found[-1][0] >= self.epochs


def split_overrides(task_overrides: list[str]) -> tuple[list[str], list[str]]:
    """The user's command-line overrides, split into (training, evaluation) job overrides."""
    train, evaluate = [], []
    for o in task_overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        top = key.split(".", 1)[0].split("/", 1)[0]
        if top in LAUNCH_KEYS:
            continue
        if top == "eval":
            evaluate.append(o)
        elif top in ("experiment", "device"):
            train.append(o)
            evaluate.append(o)
        else:
            train.append(o)
    return train, evaluate


def _bema_override(bema) -> str:
    """study.bema: true (BEMA's defaults) or its settings ({burn_in: 256, ...}), as the one
    `ema.bema=` override of a job (a second one in study.train would clash in Hydra)."""
    if bema is True:
        return "ema.bema={}"
    if isinstance(bema, DictConfig | dict):
        items = OmegaConf.to_container(bema) if isinstance(bema, DictConfig) else bema
        return "ema.bema={" + ",".join(f"{k}:{v}" for k, v in items.items()) + "}"
    raise ConfigError(f"study.bema={bema!r}: give true, false or BEMA's settings, e.g. "
                      "study.bema={burn_in:256} (conf/ema/bema.yaml lists them)")


def build_runs(cfg: DictConfig, task_overrides: list[str]) -> tuple[Path, list[Run]]:
    """The study's runs; every job config is composed here first, so a bad value fails before
    anything starts."""
    s = cfg.study
    study_dir = Path(s.out) / str(s.name)
    user_train, user_eval = split_overrides(task_overrides)
    decays = list(s.decays) if s.decays else [cfg.ema.decay]
    listed = f"[{','.join(map(str, decays))}]"
    sweep = s.get("posthoc")  # study=ema_length: power EMAs + the decays, then a sweep
    posthoc = ([f"sigma_rel=[{','.join(map(str, sweep.sigma_rel))}]", "epochs=all"]
               if sweep else None)
    # power-function EMAs (the post-hoc sweep's sources, or study.power) and a BEMA go into one
    # bank with the decays: every average of a run is scored on the same checkpoints
    power = list(sweep.tracked) if sweep else list(s.get("power") or [])
    runs = []
    for model in s.models:
        for seed in s.seeds:
            if power:
                variants = [["ema=posthoc", f"ema.decays={listed}",
                             f"ema.sigma_rels=[{','.join(map(str, power))}]"]]
            elif s.ema_bank or s.get("bema"):
                variants = [["ema=multi", f"ema.decays={listed}"]]
            else:
                variants = [[f"ema.decay={d}"] for d in decays]
            if s.get("bema"):
                variants = [[*v, _bema_override(s.bema)] for v in variants]
            for ema_args in variants:
                overrides = [f"model={model}", *user_train, *ema_args, f"seed={seed}",
                             *map(str, s.train)]
                try:
                    job_cfg = compose("train", overrides)
                except Exception as e:  # Hydra's override/compose errors
                    raise ConfigError(f"job {model} seed {seed} {ema_args}: {e}") from e
                name = f"{model}-{ema_tag(job_cfg.ema)}-seed{seed}"
                runs.append(Run(name, study_dir / name, model, overrides,
                                [*user_eval, *map(str, s.eval)], int(job_cfg.trainer.epochs),
                                posthoc_overrides=posthoc,
                                more_evals=[[*user_eval, *map(str, more)]
                                            for more in s.get("more_evals") or []]))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"the study grid names two runs the same: {names}")
    return study_dir, runs


def make_queue(cfg: DictConfig):
    if cfg.launcher.kind == "slurm":
        from .slurm import SlurmQueue

        return SlurmQueue(OmegaConf.to_container(cfg.launcher, resolve=True))
    if cfg.launcher.kind != "local":
        raise ConfigError(f"launcher.kind={cfg.launcher.kind!r}: use launcher=local or slurm")
    devices = cfg.study.devices if cfg.study.devices is not None else cfg.device
    return DeviceQueue(make_slots(devices, cfg.study.cpu_jobs,
                                  ranks_per_run=cfg.study.get("ranks_per_run", 1)),
                       cfg.launcher.timeout_min)


def training_ranks(cfg: DictConfig) -> int:
    """Processes each training job runs as: launcher=slurm's nodes x tasks_per_node, or
    study.ranks_per_run on this machine (evaluations run as one)."""
    if cfg.launcher.kind == "slurm":
        return int(cfg.launcher.get("nodes", 1) or 1) * int(
            cfg.launcher.get("tasks_per_node", 1) or 1)
    return int(cfg.study.get("ranks_per_run", 1) or 1)


def _count_rows(path: Path) -> int:
    try:
        with open(path) as f:
            return max(0, sum(1 for _ in csv.reader(f)) - 1)
    except OSError:
        return 0


def _restarts(run: Run, stage: str) -> str:
    """" requeued (n)" when SLURM requeued the stage's job (launch.jobs notes it)."""
    try:
        n = int(run.folder.restarts(stage).read_text())
    except (OSError, ValueError):
        return ""
    return f" requeued ({n})" if n else ""


def describe(run: Run) -> str:
    """One status line: queued, training epoch k/n, evaluating (rows), done, failed (log)."""
    ticket = run.tickets[-1] if run.tickets else None
    where = f" [{ticket.slot.label}]" if ticket is not None and ticket.slot else ""
    requeued = _restarts(run, run.state)
    if run.state == "training":
        epoch = _count_rows(run.folder.metrics)
        return f"training epoch {epoch}/{run.epochs}{where}{requeued}"
    if run.state.startswith("evaluating"):
        return f"{run.state} ({_count_rows(run.folder.fid_csv)} rows){where}{requeued}"
    if run.state == "posthoc":
        return f"reconstructing post-hoc EMAs{where}"
    if run.state == "failed":
        return f"FAILED: {run.note}"
    return run.state + (f" ({run.note})" if run.note else "")


class Progress:
    """One line per run, redrawn in place on a terminal, printed on change otherwise."""

    def __init__(self, runs: list[Run], stream=None):
        self.runs, self.stream = runs, stream or sys.stdout
        self.tty = self.stream.isatty()
        self.last: dict[str, str] = {}
        self.drawn = 0
        self.width = max(len(r.name) for r in runs)

    def update(self, final: bool = False) -> None:
        lines = {r.name: describe(r) for r in self.runs}
        if self.tty:
            if self.drawn:
                self.stream.write(f"\x1b[{self.drawn}F")
            for r in self.runs:
                self.stream.write(f"\x1b[2K{r.name:<{self.width}}  {lines[r.name]}\n")
            self.drawn = len(self.runs)
        else:
            for r in self.runs:
                if self.last.get(r.name) != lines[r.name] or final:
                    self.stream.write(f"{r.name:<{self.width}}  {lines[r.name]}\n")
        self.stream.flush()
        self.last = lines


def run_study(cfg: DictConfig, task_overrides: list[str] | None = None,
              poll_s: float | None = None) -> tuple[Path | None, list[Run]]:
    """Train, evaluate and report; returns (report path or None, runs)."""
    began = time.monotonic()
    study_dir, runs = build_runs(cfg, list(task_overrides or []))
    queue, ranks = make_queue(cfg), training_ranks(cfg)
    poll_s = poll_s if poll_s is not None else float(cfg.launcher.get("poll_s", 2))
    study_dir.mkdir(parents=True, exist_ok=True)
    print(f"study {cfg.study.name}: {len(runs)} run(s) in {study_dir}", flush=True)

    jobs = {"training": (TrainJob, "train_overrides", "to train"),
            "posthoc": (PosthocJob, "posthoc_overrides", "to reconstruct post-hoc EMAs"),
            "evaluating": (EvalJob, "eval_overrides", "to evaluate")}

    def submit(run: Run, stage: str) -> None:
        evaluating = run.eval_stages()
        job, overrides, note = jobs["evaluating" if stage in evaluating else stage]
        args = evaluating[stage] if stage in evaluating else getattr(run, overrides)
        run.tickets.append(queue.submit(Ticket(
            f"{run.name}:{stage}", job(), (str(run.dir), args), run.folder.logs_dir,
            ranks=ranks if stage == "training" else 1)))
        run.state, run.note = "queued", note

    def next_stage(run: Run, done: str | None) -> str | None:
        order = ["training"] + (["posthoc"] if run.posthoc_overrides else [])
        order += list(run.eval_stages()) if cfg.study.evaluate else []
        return order[order.index(done) + 1] if done in order[:-1] else (
            order[0] if done is None else None)

    for run in runs:
        stage = next_stage(run, "training") if run.trained() else "training"
        if stage:
            submit(run, stage)
        else:
            run.state = "done"

    progress = Progress(runs)
    try:
        while queue.busy:
            ended = queue.poll()
            for t in ended:
                run = next(r for r in runs if t in r.tickets)
                stage = t.name.rsplit(":", 1)[1]
                if t.state == "failed":
                    run.state, run.note = "failed", f"{t.error} (log: {t.log_path})"
                elif next_stage(run, stage):
                    submit(run, next_stage(run, stage))
                else:
                    run.state, run.note = "done", ""
            for run in runs:
                t = run.tickets[-1] if run.tickets else None
                if t is not None and t.state == "running":
                    run.state, run.note = t.name.rsplit(":", 1)[1], ""
            progress.update()
            if queue.busy:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        queue.cancel_all()
        progress.update(final=True)
        print("interrupted: every job was stopped; run the same command again to resume",
              flush=True)
        raise
    progress.update(final=True)

    report = None
    evaluated = [r for r in runs if r.folder.fid_csv.is_file()]
    stages = stage_seconds([t for r in runs for t in r.tickets])
    if cfg.study.report and evaluated:
        from analysis.report import make_report

        started = time.monotonic()
        report = make_report(study_dir=study_dir)
        stages["report"] = time.monotonic() - started
        print(f"report: {report}", flush=True)
    for line in summary(cfg.study.name, time.monotonic() - began, stages,
                        cfg.study.get("budget_min")):
        print(line, flush=True)
    failed = [r for r in runs if r.state == "failed"]
    for r in failed:
        print(f"failed: {r.name}: {r.note}", flush=True)
    return report, runs


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _adopt_orphans() -> None:
    """Linux: make this study the child subreaper of its jobs, so that a job process whose
    submitit controller died is re-parented to the study (and stopped with it below) rather
    than to init, where it would run on unseen."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _run(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task)
    # `kill <pid>` (and a scheduler's SIGTERM) stops the jobs like Ctrl-C does
    signal.signal(signal.SIGTERM, _interrupt)
    _adopt_orphans()
    try:
        _, runs = run_study(cfg, overrides)
    except KeyboardInterrupt:
        # `kill -INT <study>` reaches the study alone (Ctrl-C reaches the whole process group):
        # whatever the controllers left behind goes now, with the study
        kill_descendants(os.getpid())
        sys.exit(130)
    if any(r.state == "failed" for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    from explore.cli import hydra_entry

    hydra_entry("launch_study", _run, logger="launch.study")()
