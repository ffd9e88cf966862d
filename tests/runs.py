"""Tiny training runs made once per test session and shared by every test that needs one.

    def test_x(trained_run):                     # a finished run folder, to read only
        run = trained_run("model=lift", "ema.decay=0.9")
    def test_y(run_copy):                        # a copy of it in the test's tmp_path, to write in
        run = run_copy("model=lift", "ema.decay=0.9")

A configuration is `TINY_TRAIN` plus the overrides (their order is part of the key, as it is for
Hydra). It is trained the first time any test asks for it, by whichever pytest-xdist worker asks
first (the others wait on a file lock and then read the same folder), into a temporary folder
renamed into place only when training finished: a run in the cache is always complete.

A shared run must stay as it was trained: `trained_run` checks, when its test ends, that nothing
was added, removed or rewritten in the folders it handed out, and fails that test if it was (root
ignores file permissions, so a read-only mode would not stop a write). A test that evaluates into
a run, resumes it, corrupts a checkpoint or changes its files takes a `run_copy`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

from tiny import TINY_TRAIN

from explore.core.config import compose
from explore.train import train


class RunCache:
    """Trained tiny runs under `root`, one folder per configuration."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, overrides: tuple[str, ...]) -> Path:
        key = hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:10]
        model = next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")),
                     "baseline")
        return self.root / f"{model}-{key}"

    def get(self, *overrides: str) -> Path:
        """The finished run folder of TINY_TRAIN + `overrides`, trained if no one has yet."""
        final = self.folder(overrides)
        if final.is_dir():
            return final
        with open(self.root / f".{final.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be training it right now
            if not final.is_dir():
                partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
                shutil.rmtree(partial, ignore_errors=True)
                train(compose("train", [*TINY_TRAIN, *overrides]), partial)
                partial.rename(final)
        return final

    def copy(self, dest: Path, *overrides: str) -> Path:
        """A copy of the run at `dest` (a fresh folder), to resume, evaluate into or break."""
        shutil.copytree(self.get(*overrides), dest)
        return dest


def fingerprint(folder: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file: what a write would change."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def changes(before: dict, after: dict) -> list[str]:
    """The files added, removed or rewritten between two fingerprints, named."""
    return ([f"added {p}" for p in after if p not in before]
            + [f"removed {p}" for p in before if p not in after]
            + [f"rewrote {p}" for p in before if p in after and before[p] != after[p]])
