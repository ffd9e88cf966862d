"""One training process per run folder: `<run>/train.lock` holds the writer's host, pid (and SLURM
job id), so a second `explore.train` on the same folder stops at once, naming who holds it,
instead of interleaving checkpoints with the first.

The lock is an OS lock (`flock`) on that file, held for the whole run: the OS releases it when
the process dies, and taking it is atomic, so of several processes that start together on a
folder whose previous holder is dead, exactly one takes it over (a check-then-delete-then-create
of the file alone let two of them through: both saw the stale holder, both took over). The JSON
inside says who holds it, for the messages, and still decides for holders the flock cannot see:
a process on another host of a network file system without coherent flock is respected (the
message says how to remove the file if that run is known to be dead), a dead process's file on
this host or the same SLURM job requeued is stale and taken over with a warning.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from explore.core.errors import UserError
from explore.core.files import pid_alive

log = logging.getLogger("explore.train")

_NO_FLOCK = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)


class RunLockedError(UserError):
    """Another training process writes to this run folder."""


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "since": datetime.datetime.now().isoformat(timespec="seconds")}


def _try_flock(fd: int) -> bool | None:
    """Take the flock without waiting: True taken, False held by another, None unsupported."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in _NO_FLOCK:
            return None
        raise


class RunLock:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.held = False
        self._fd: int | None = None
        self.taken_over: dict | None = None  # the stale holder `acquire` replaced, if any

    def holder(self) -> dict | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        if not text.strip():
            return None  # created, not yet written: its taker is about to write it
        try:
            return json.loads(text)
        except ValueError:
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

    def _locked_error(self, holder: dict | None) -> RunLockedError:
        if not holder:
            return RunLockedError(
                f"{self.path.parent} is being taken by another training process right now "
                f"(it holds {self.path}); two writers would interleave its checkpoints. Wait "
                f"for it, stop it, or train into another folder.")
        return RunLockedError(
            f"{self.path.parent} is being trained by process {holder.get('pid')} on "
            f"{holder.get('host')} (since {holder.get('since')}"
            + (f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else "")
            + f"); two writers would interleave its checkpoints. Wait for it, stop it, or "
            f"train into another folder. If that process is known to be gone, delete "
            f"{self.path}.")

    def _held_by_other(self) -> dict | None:
        """Who holds the flock when someone does: its JSON, once written (a taker writes it
        right after locking; give it a moment)."""
        holder = self.holder()
        for _ in range(20):
            if holder and not self._stale(holder):
                break
            time.sleep(0.05)
            holder = self.holder()
        return holder if holder and not self._stale(holder) else None

    def check(self) -> None:
        """Raise RunLockedError when a live process holds the lock (reads only: creates
        nothing, so a refused start leaves the folder as it was)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            taken = _try_flock(fd)
        finally:
            os.close(fd)  # releases it when taken
        if taken is False:
            raise self._locked_error(self._held_by_other())
        holder = self.holder()
        if holder is not None and not self._stale(holder):
            raise self._locked_error(holder)

    def acquire(self) -> None:
        """Take the lock (atomically); a stale one is taken over (`describe_takeover()`)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            taken = _try_flock(fd)
            if taken is False:
                os.close(fd)
                raise self._locked_error(self._held_by_other())
            try:  # the holder we waited on may have deleted the file: lock the one on disk
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = self.holder()
        if holder is not None and not self._stale(holder):
            os.close(fd)
            raise self._locked_error(holder)
        self.taken_over = holder  # the caller says so where its log is (train.log)
        if taken is None:
            log.warning("the file system of %s has no flock: the run lock cannot exclude a "
                        "second process started at the same moment", self.path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me()).encode(), 0)
        os.fsync(fd)
        self._fd, self.held = fd, True

    def describe_takeover(self) -> str | None:
        if self.taken_over is None:
            return None
        return (f"taking over the stale lock {self.path} of process "
                f"{self.taken_over.get('pid')} on {self.taken_over.get('host')} (not running)")

    def release(self) -> None:
        if self.held:
            holder = self.holder()
            if holder and holder.get("pid") == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()  # still locked: a taker that opened it re-checks
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
