"""A real one-node SLURM cluster for the tests, started in a temporary folder and stopped after.

Steps as seen working on this project's machines (../shared/notes/slurm-on-one-machine.md):
munged as the munge user, a minimal slurm.conf pointed to by SLURM_CONF, then slurmctld and
slurmd. Needs Debian's `slurm-wlm` and `munge` packages (.ci/run installs them) and root."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged", "sinfo", "runuser")


def missing() -> str | None:
    """Why no cluster can be started here (None: it can)."""
    absent = [d for d in DAEMONS if shutil.which(d) is None]
    if absent:
        return f"SLURM not installed ({', '.join(absent)} missing): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    return None


def _run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def _start_munge() -> None:
    if _run("pgrep", "-x", "munged").returncode == 0:
        return
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    _run("chown", "-R", "munge:munge", "/run/munge", "/var/log/munge", "/var/lib/munge",
         "/etc/munge")
    out = _run("runuser", "-u", "munge", "--", "munged")
    if out.returncode != 0:
        raise RuntimeError(f"munged did not start: {out.stderr.strip()}")


def _conf(folder: Path) -> str:
    host = socket.gethostname()
    node = _run("slurmd", "-C").stdout.splitlines()[0].strip()  # NodeName=<host> CPUs=...
    return "\n".join([
        "ClusterName=testcluster", f"SlurmctldHost={host}", "AuthType=auth/munge",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SlurmUser=root",
        "SlurmdUser=root", f"StateSaveLocation={folder}/state",
        f"SlurmdSpoolDir={folder}/spool", f"SlurmctldPidFile={folder}/slurmctld.pid",
        f"SlurmdPidFile={folder}/slurmd.pid", f"SlurmctldLogFile={folder}/slurmctld.log",
        f"SlurmdLogFile={folder}/slurmd.log", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", "ReturnToService=2",
        "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
        "MpiDefault=none", "SchedulerType=sched/backfill", "InactiveLimit=0", "KillWait=5",
        "MinJobAge=300",
        # a requeued job waits cred_expire seconds before it may start again (default 120):
        # short here, so the time-limit requeue test is minutes, not a quarter of an hour
        "AuthInfo=cred_expire=10", "SchedulerParameters=bf_interval=5,sched_interval=5", node,
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""])


class Cluster:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.conf = self.folder / "slurm.conf"

    def start(self, wait_s: float = 90) -> None:
        for sub in ("state", "spool"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(_conf(self.folder))
        _start_munge()
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for daemon in ("slurmctld", "slurmd"):
            out = _run(daemon, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"{daemon} did not start: {out.stderr.strip()} "
                                   f"(log: {self.folder / (daemon + '.log')})")
        end = time.time() + wait_s
        while time.time() < end:  # the node shows unk* for a few seconds
            state = _run("sinfo", "-h", "-o", "%T", env=env).stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                return
            time.sleep(1)
        raise RuntimeError(f"the SLURM node did not come up (state {state!r}); logs in "
                           f"{self.folder}")

    def stop(self) -> None:
        for name in ("slurmd.pid", "slurmctld.pid"):
            try:
                os.kill(int((self.folder / name).read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
