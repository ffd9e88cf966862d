"""Checkpoint files: atomic writes, validated reads, and finding a run's checkpoints.

A training checkpoint (`<run>/checkpoints/epoch_NNNN.pt`) is one dict holding all run state:

    model_state, ema_state {decay, shadow, ...} | None, ema_decay, optimizer, lr_schedule,
    grad_scaler, epoch, step, rng, config (resolved), history (per-epoch metrics rows), format

`model_state`, `ema_state` = {decay, shadow: name -> tensor} and `ema_decay` are the layout of
the original study's checkpoints (`lift_ema_400ep.pth`), which therefore load here unchanged.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from .errors import UserError
from .files import atomic_write

FORMAT = "explore-ema-study/1"
_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pt$")
_ORIGINAL_RE = re.compile(r"_(\d+)ep\.pth?$")


class CheckpointError(UserError):
    """A checkpoint file that cannot be used; the message names the file."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    return checkpoint_dir(run_dir) / f"epoch_{epoch:04d}.pt"


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """torch.save `state` to `path` atomically."""
    state = {"format": FORMAT, **state}
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location="cpu", trusted: bool = False) -> dict:
    """Load and sanity-check a checkpoint; errors name the file and say what is wrong.

    Loads with `weights_only=True` (no arbitrary code from pickles) unless `trusted`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted copy?")
    try:
        state = torch.load(path, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as e:
        if not trusted and "weights_only" in str(e):
            raise CheckpointError(
                f"checkpoint {path} holds Python objects beyond tensors and plain containers; "
                f"if you trust the file, load it with trusted=True (eval.trust_checkpoint=true)"
                f": {str(e).splitlines()[0]}") from e
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {e}") from e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated "
                              f"(torch.load failed: {first})") from e
    if not isinstance(state, dict) or "model_state" not in state:
        found = sorted(map(str, state))[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a checkpoint of this study (no 'model_state'; "
                              f"found {found})")
    return state


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of `<run>/checkpoints/epoch_NNNN.pt`, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _EPOCH_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def epoch_from_name(path: str | Path) -> int | None:
    """Epoch in a checkpoint's name: epoch_0400.pt or the original study's lift_ema_400ep.pth."""
    name = Path(path).name
    m = _EPOCH_RE.match(name) or _ORIGINAL_RE.search(name)
    return int(m.group(1)) if m else None


def latest_valid_checkpoint(run_dir: str | Path, log=None) -> tuple[Path, dict] | None:
    """The newest checkpoint of a run that loads, skipping (and reporting) broken ones."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            if log is not None:
                log(f"skipping unusable checkpoint: {e}")
    return None
