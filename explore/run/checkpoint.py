"""Checkpoint files: what is saved, written atomically, and read back with errors that say what is
wrong (where they live: explore.run.folder).

Two kinds of file, because evaluation and resuming need different things:

- **Snapshots** `<run>/checkpoints/epoch_NNNN.pt`, every `checkpoint.every` epochs: what the study
  evaluates, `Training.weights_state()` (model_state, ema_state {decay, shadow, ...} | None,
  ema_decay, emas) plus epoch, step, config (resolved), history (per-epoch metrics rows),
  model_kind, format; no optimizer. Floating tensors in `checkpoint.snapshot_dtype` (float32, or
  bfloat16/float16 at half the size). Reference LIFT with one EMA: 468 MB in float32.
- **The resume state** `<run>/checkpoints/last.pt`: `Training.state_dict()` (weights, optimizer,
  LR schedule, grad scaler) in float32, RNG, the position inside the epoch and everything the
  rest of the epoch needs to continue bit for bit; rewritten in place (atomically: the previous
  one stays whole until the new one is) at every epoch end and every
  `checkpoint.resume_every_min` minutes. Reference LIFT: 936 MB.

`model_state`, `ema_state` = {decay, shadow: name -> tensor} and `ema_decay` are the layout of
the original study's checkpoints (`lift_ema_400ep.pth`), which therefore load here unchanged.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from explore.core.errors import UserError
from explore.core.files import atomic_write
from explore.run.folder import RunFolder

FORMAT = "explore-ema-study/1"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(UserError):
    """A checkpoint file that cannot be used; the message names the file."""


def save_file(obj, path: str | Path) -> Path:
    """torch.save `obj` to `path` atomically (a full disk: DiskFullError naming it)."""
    return atomic_write(path, lambda f: torch.save(obj, f), expected_bytes=tensor_bytes(obj))


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """A training checkpoint (tagged with FORMAT), written atomically."""
    return save_file({"format": FORMAT, **state}, path)


def tensor_bytes(obj, floating_dtype: torch.dtype | None = None, _seen=None) -> int:
    """Bytes of the tensors in a nested dict/list (each storage once): a file's size, to a few
    KB of pickle overhead; with `floating_dtype`, the size once floating tensors are cast."""
    seen = set() if _seen is None else _seen
    if isinstance(obj, torch.Tensor):
        key = (obj.untyped_storage().data_ptr(), obj.dtype, obj.numel()) if obj.numel() else None
        if key in seen:
            return 0
        if key is not None:
            seen.add(key)
        size = (torch.empty((), dtype=floating_dtype).element_size()
                if floating_dtype is not None and obj.is_floating_point() else obj.element_size())
        return obj.numel() * size
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, floating_dtype, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v, floating_dtype, seen) for v in obj)
    return 0


def cast_floating(obj, dtype: torch.dtype, _memo=None):
    """A copy of a nested dict/list with floating tensors cast to `dtype`; objects shared in the
    input (the primary EMA state is in ema_state and in emas) stay shared in the output."""
    memo = {} if _memo is None else _memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, torch.Tensor):
        out = obj.to(dtype) if obj.is_floating_point() and obj.dtype != dtype else obj
    elif isinstance(obj, dict):
        out = {k: cast_floating(v, dtype, memo) for k, v in obj.items()}
    elif isinstance(obj, list):
        out = [cast_floating(v, dtype, memo) for v in obj]
    else:
        return obj
    memo[id(obj)] = out
    return out


def check_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise CheckpointError(f"checkpoint.snapshot_dtype={name!r}: use one of {list(DTYPES)}")
    return DTYPES[name]


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
