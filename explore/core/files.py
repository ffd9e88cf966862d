"""Writing files so that a crash never leaves half a file under its final name, a full disk says
so in one sentence, and the temporaries of killed writers do not pile up.

Every file is written to a temporary `.<name>.<pid>.<random>.tmp` beside it, fsynced, then renamed
over the final name: the previous file stays complete until the new one is. A write that fails
removes its temporary; a process killed mid-write cannot, so `remove_stale_temporaries` (called
by training at start, while it holds the run's lock) removes those of writers no longer alive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from explore.core.errors import UserError

_TMP_SUFFIX = ".tmp"


class DiskFullError(UserError):
    """A write failed because the file system is full; the previous file is intact."""


def atomic_write(path: str | Path, write, expected_bytes: int | None = None) -> Path:
    """Call `write(file_object)` on a temporary file beside `path`, fsync, then rename.

    A crash at any point leaves either the previous file or nothing under `path`, never a
    half-written one (the temporary file is removed on error). A full file system raises
    `DiskFullError` naming it, its free space and the bytes needed (`expected_bytes`, when the
    caller knows them), instead of the writer's own error (torch.save's is "unexpected pos").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=_TMP_SUFFIX,
                               dir=path.parent)
    try:
        # mkstemp makes the file 0600; a results file others on a shared cluster cannot read
        # is lost to them, so the final file gets the mode open() would give it (umask)
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        written = _size(tmp)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, Exception) and _is_disk_full(e):
            raise disk_full_error(path, max(expected_bytes or 0, written),
                                  exact=expected_bytes is not None) from e
        raise
    # make the rename itself durable
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path


def current_umask() -> int:
    """This process's umask (read from /proc where it can be: setting it to read it, the only
    other way, is not thread-safe)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[bool]:
    """Hold an OS lock (`flock`) on the file `path` (created, never deleted: deleting a lock
    file lets a waiter lock a name no one else sees) while the block runs; other processes
    calling this wait. Released by the OS when the process dies, so it never goes stale.
    Yields False, unlocked, on a file system without flock (some network mounts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _is_disk_full(e: BaseException) -> bool:
    """ENOSPC anywhere in the exception chain, or torch.save's report of a short write."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "unexpected pos" in text:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system holding `path` (or its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    while not os.path.ismount(p):
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system of `path` (or of its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def disk_full_error(path: Path, needed: int, exact: bool = False) -> DiskFullError:
    fs = mount_point(path.parent)
    need = (f"it needs {fmt_bytes(needed)}" if exact
            else f"at least {fmt_bytes(needed)} were written before it failed")
    return DiskFullError(
        f"writing {path} failed: the file system at {fs} is full ({fmt_bytes(free_bytes(fs))} "
        f"free; {need}). The previous {path.name}, if any, is intact. Free space there, or "
        f"write less: checkpoint.every (snapshots every N epochs), "
        f"checkpoint.snapshot_dtype=bfloat16 (half size), checkpoint.keep_last=N.")


def remove_stale_temporaries(folders, owner_alive=None) -> tuple[int, int]:
    """Remove temporaries of `atomic_write` left by writers that are no longer alive (their pid
    is in the name); returns (files, bytes) removed. `owner_alive(pid) -> bool` defaults to
    "a process with that pid exists on this machine"."""
    alive = owner_alive or pid_alive
    count = size = 0
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for p in folder.glob(f".*{_TMP_SUFFIX}"):
            parts = p.name.split(".")  # '', name..., pid, random, 'tmp'
            pid = int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None
            if pid is not None and pid != os.getpid() and alive(pid):
                continue
            size += _size(str(p))
            with contextlib.suppress(OSError):
                p.unlink()
                count += 1
    return count, size


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
