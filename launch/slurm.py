"""Running the study's jobs on a SLURM cluster through submitit (one GPU per job by default).

Same interface as `launch.pool.DeviceQueue` (submit / poll / cancel_all / busy): the cluster
does the queueing, so every ticket is submitted at once.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Mapping

from .pool import Slot, Ticket, collect


class SlurmQueue:
    def __init__(self, params: Mapping):
        self.params = dict(params)
        self.tickets: list[Ticket] = []

    def executor_parameters(self) -> dict:
        """submitit AutoExecutor parameters from the `launcher` config."""
        p = self.params
        out = {"timeout_min": int(p.get("timeout_min", 60)),
               # SLURM signals the job this long before its time limit (or on preemption):
               # training saves its resume state and the job is requeued
               "slurm_signal_delay_s": int(p.get("signal_delay_s", 90)),
               "gpus_per_node": int(p.get("gpus_per_node", 1) or 0),
               "cpus_per_task": int(p.get("cpus_per_task", 1) or 1)}
        if p.get("mem_gb"):
            out["mem_gb"] = int(p["mem_gb"])
        for key in ("partition", "account", "qos", "gres", "constraint"):
            if p.get(key):
                out[f"slurm_{key}"] = p[key]
        if p.get("setup"):
            out["slurm_setup"] = list(p["setup"])
        if p.get("additional_parameters"):
            out["slurm_additional_parameters"] = dict(p["additional_parameters"])
        return out

    def submit(self, ticket: Ticket) -> Ticket:
        import submitit

        # max_num_timeout is the executor's (requeues after a timeout), not a job parameter
        ex = submitit.AutoExecutor(folder=ticket.folder, cluster="slurm",
                                   slurm_max_num_timeout=int(self.params.get("max_num_timeout",
                                                                             20) or 0))
        params = self.executor_parameters()
        gpus = int(self.params.get("gpus_per_node", 1) or 0)
        if ticket.ranks > 1:  # a data-parallel training: its nodes x tasks, a GPU per task
            params.update(nodes=int(self.params.get("nodes", 1) or 1),
                          tasks_per_node=int(self.params.get("tasks_per_node", 1) or 1))
        else:  # an evaluation (or a one-GPU training): one task, at most one GPU
            params.update(gpus_per_node=min(gpus, 1))
        ex.update_parameters(name=ticket.name, **params)
        # inside a SLURM job the allocated GPU is cuda:0 (several: each rank its LOCAL_RANK's);
        # CPU jobs use the task's cores
        slot = Slot("cuda" if gpus else "cpu", 0, int(self.params.get("cpus_per_task", 1) or 1),
                    gpus=tuple(range(gpus)) if ticket.ranks > 1 and gpus else (),
                    ranks=ticket.ranks)
        ticket.job = ex.submit(ticket.fn, *ticket.args, slot)
        ticket.slot, ticket.state, ticket.started = slot, "running", time.time()
        ticket.extra["slurm_job_id"] = ticket.job.job_id
        self.tickets.append(ticket)
        return ticket

    def poll(self) -> list[Ticket]:
        ended = []
        for t in self.tickets:
            if t.state != "running":
                continue
            if t.job.done():
                collect(t)
                ended.append(t)
            elif self._vanished(t):
                t.ended, t.state = time.time(), "failed"
                t.error = (f"SLURM job {t.job.job_id} ended without a result: killed before "
                           f"submitit could write one (a signal it does not catch, or the "
                           f"node); its log says more")
                ended.append(t)
        return ended

    # how often a job submitit knows nothing about is looked up with squeue
    VANISHED_CHECK_S = 30.0

    def _vanished(self, t: Ticket) -> bool:
        """Whether a running ticket's job has left SLURM without a result. submitit learns a
        job's end from `sacct`; on a cluster without accounting it only sees the result file,
        which a job killed by a signal never writes, and the study would wait forever. So a job
        submitit knows no state of is looked up with squeue (every VANISHED_CHECK_S): gone from
        it twice in a row, and still no result file, it has ended."""
        now = time.monotonic()
        if now - t.extra.get("squeue_checked", -1e9) < self.VANISHED_CHECK_S:
            return False
        t.extra["squeue_checked"] = now
        if t.job.state != "UNKNOWN" or _listed_by_squeue(str(t.job.job_id)) is not False:
            t.extra["squeue_gone"] = 0
            return False
        t.extra["squeue_gone"] = t.extra.get("squeue_gone", 0) + 1
        return t.extra["squeue_gone"] >= 2 and not t.job.paths.result_pickle.exists()

    def cancel_all(self) -> None:
        for t in self.tickets:
            if t.state == "running":
                with contextlib.suppress(Exception):
                    t.job.cancel(check=False)
                t.state = "cancelled"

    @property
    def busy(self) -> bool:
        return any(not t.finished for t in self.tickets)


def _listed_by_squeue(job_id: str) -> bool | None:
    """Whether squeue lists the job (pending, running, requeued...): False when SLURM no
    longer knows it, None when squeue cannot say (no squeue, the controller unreachable)."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode == 0:
        return bool(out.stdout.strip())
    return False if "Invalid job id" in out.stderr else None
