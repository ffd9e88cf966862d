"""One training process per run folder: `<run>/train.lock` holds the writer's host, pid (and SLURM
job id), so a second `explore.train` on the same folder stops at once, naming who holds it,
instead of interleaving checkpoints with the first.

A lock whose process is gone (same host, pid not running; or the same SLURM job requeued) is
stale: it is taken over with a warning. A lock from another host cannot be checked from here: it
is respected, and the message says how to remove it if that run is known to be dead.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
from pathlib import Path

from .errors import UserError
from .files import pid_alive

log = logging.getLogger("explore.train")


class RunLockedError(UserError):
    """Another training process writes to this run folder."""


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "since": datetime.datetime.now().isoformat(timespec="seconds")}


class RunLock:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.held = False

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: half-written by a process that died while taking it

    def _stale(self, holder: dict) -> bool:
        me = _me()
        if not holder:
            return True
        if holder.get("slurm_job_id") and holder.get("slurm_job_id") == me["slurm_job_id"]:
            return True  # this SLURM job, requeued: its previous run is over
        if holder.get("host") == me["host"]:
            return holder.get("pid") == me["pid"] or not pid_alive(int(holder.get("pid", -1)))
        return False

    def check(self) -> None:
        """Raise RunLockedError when a live process holds the lock (reads only)."""
        holder = self.holder()
        if holder is not None and not self._stale(holder):
            raise RunLockedError(
                f"{self.path.parent} is being trained by process {holder.get('pid')} on "
                f"{holder.get('host')} (since {holder.get('since')}"
                + (f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else "")
                + f"); two writers would interleave its checkpoints. Wait for it, stop it, or "
                f"train into another folder. If that process is known to be gone, delete "
                f"{self.path}.")

    def acquire(self) -> None:
        """Take the lock (atomically); a stale one is taken over with a warning."""
        self.check()
        holder = self.holder()
        if holder is not None:
            log.warning("taking over the stale lock %s of process %s on %s (not running)",
                        self.path, holder.get("pid"), holder.get("host"))
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another process took it between check and create
            self.check()
            raise
        with os.fdopen(fd, "w") as f:
            json.dump(_me(), f)
        self.held = True

    def release(self) -> None:
        if self.held:
            holder = self.holder()
            if holder and holder.get("pid") == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
