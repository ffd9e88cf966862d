"""Checkpoint files: atomic writes and validated reads (where they live: explore.runfiles).

A training checkpoint (`<run>/checkpoints/epoch_NNNN.pt`) is one dict holding all run state:
`Training.state_dict()` (model_state, ema_state {decay, shadow, ...} | None, ema_decay, emas,
optimizer, lr_schedule, grad_scaler) and epoch, step, rng, config (resolved), history
(per-epoch metrics rows), model_kind, format.

`model_state`, `ema_state` = {decay, shadow: name -> tensor} and `ema_decay` are the layout of
the original study's checkpoints (`lift_ema_400ep.pth`), which therefore load here unchanged.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from .errors import UserError
from .files import atomic_write
from .runfiles import RunFolder

FORMAT = "explore-ema-study/1"


class CheckpointError(UserError):
    """A checkpoint file that cannot be used; the message names the file."""


def save_file(obj, path: str | Path) -> Path:
    """torch.save `obj` to `path` atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """A training checkpoint (tagged with FORMAT), written atomically."""
    return save_file({"format": FORMAT, **state}, path)


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


def latest_valid_checkpoint(run_dir: str | Path, log=None) -> tuple[Path, dict] | None:
    """The newest checkpoint of a run that loads, skipping (and reporting) broken ones."""
    for _, path in reversed(RunFolder(run_dir).checkpoints()):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            if log is not None:
                log(f"skipping unusable checkpoint: {e}")
    return None
