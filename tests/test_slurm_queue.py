"""launch.slurm.SlurmQueue without a cluster: a job that left SLURM without a result (killed by
a signal it does not catch, on a cluster without accounting, where submitit never learns its
end) fails its ticket instead of keeping the study waiting forever; a job SLURM still lists,
one squeue cannot tell about, and one that wrote its result are left alone."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from launch import slurm
from launch.pool import Ticket


class FakeJob:
    """What SlurmQueue reads of a submitit job: no result yet, and a state submitit does not
    know (sacct off)."""

    def __init__(self, folder: Path, state: str = "UNKNOWN"):
        self.job_id = "42"
        self.state = state
        self.paths = SimpleNamespace(result_pickle=folder / "42_0_result.pkl",
                                     stderr=folder / "42_0_log.err")

    def done(self) -> bool:
        return False


def queue_with(job) -> tuple[slurm.SlurmQueue, Ticket]:
    queue = slurm.SlurmQueue({})
    queue.VANISHED_CHECK_S = 0  # look up at every poll
    ticket = Ticket("lift:evaluating", print, (), job.paths.result_pickle.parent,
                    state="running", job=job)
    queue.tickets.append(ticket)
    return queue, ticket


def test_a_job_gone_from_squeue_without_a_result_fails_its_ticket(tmp_path, monkeypatch):
    monkeypatch.setattr(slurm, "_listed_by_squeue", lambda job_id: False)
    queue, ticket = queue_with(FakeJob(tmp_path))
    assert queue.poll() == []  # gone once: it may be between its end and its result file
    assert queue.poll() == [ticket]
    assert ticket.state == "failed" and "SLURM job 42 ended without a result" in ticket.error
    assert not queue.busy


@pytest.mark.parametrize("case", ["listed", "squeue cannot say", "result written",
                                  "sacct knows it"])
def test_a_job_slurm_still_has_or_that_finished_is_not_failed(tmp_path, monkeypatch, case):
    monkeypatch.setattr(slurm, "_listed_by_squeue",
                        lambda job_id: {"listed": True, "squeue cannot say": None}.get(case, False))
    job = FakeJob(tmp_path, state="RUNNING" if case == "sacct knows it" else "UNKNOWN")
    if case == "result written":
        job.paths.result_pickle.write_bytes(b"")
    queue, ticket = queue_with(job)
    for _ in range(3):
        assert queue.poll() == []
    assert ticket.state == "running"


@pytest.mark.parametrize("returncode, out, err, expected", [
    (0, "PENDING\n", "", True),
    (0, "", "", False),
    (1, "", "slurm_load_jobs error: Invalid job id specified", False),
    (1, "", "slurm_load_jobs error: Unable to contact slurm controller", None),
])
def test_squeue_answers_are_read(monkeypatch, returncode, out, err, expected):
    def run(cmd, **kw):
        assert cmd[:4] == ["squeue", "-h", "-j", "42"]
        return subprocess.CompletedProcess(cmd, returncode, out, err)

    monkeypatch.setattr(slurm.subprocess, "run", run)
    assert slurm._listed_by_squeue("42") is expected
