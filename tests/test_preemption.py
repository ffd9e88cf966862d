"""The SLURM signal is taken at a step boundary and handed to submitit's handler (without
SLURM: a Python handler on SIGUSR2 stands in for submitit's)."""

from __future__ import annotations

import os
import signal

import pytest

from explore.run.checkpoint import load_checkpoint
from explore.train import train
from explore.training import loop as train_mod
from explore.training.preemption import StepBoundary


def test_the_signal_waits_for_the_step_boundary_then_reaches_the_job_runner():
    got = []
    old = signal.signal(signal.SIGUSR2, lambda s, f: got.append(s))
    try:
        with StepBoundary() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.pending and got == []  # noted, not yet passed on
            stop.hand_over()
            assert got == [signal.SIGUSR2] and not stop.pending
        os.kill(os.getpid(), signal.SIGUSR2)  # outside: the job runner's handler again
        assert got == [signal.SIGUSR2] * 2
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_training_saves_its_resume_state_when_slurm_signals(tiny_cfg, tmp_path, monkeypatch):
    class Requeued(Exception):
        pass

    def submitit_handler(signum, frame):  # what submitit does: requeue and exit
        raise Requeued

    real = train_mod.train_step
    calls = {"n": 0}

    def step(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 6:  # SLURM's warning arrives during step 6 (epoch 2, batch 2)
            os.kill(os.getpid(), signal.SIGUSR2)
        return real(*a, **kw)

    monkeypatch.setattr(train_mod, "train_step", step)
    old = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(Requeued):
            train(tiny_cfg("checkpoint.resume_every_min=1000"), tmp_path / "run")
    finally:
        signal.signal(signal.SIGUSR2, old)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (last["epoch"], last["batch"], last["step"]) == (1, 2, 6)  # saved after step 6
    assert not (tmp_path / "run" / "train.lock").exists()
