"""Weight sets of a checkpoint: the raw weights and every average it holds, by name.

    raw            model_state: the weights the optimizer produced ("without EMA")
    ema            ema_state: the run's primary EMA ("with EMA"; decay in ema_state['decay'])
    ema@0.999      another decay tracked in the same run (checkpoint `emas`, conf/ema/multi.yaml)
    phema@0.1      a power-function EMA tracked in the run (`emas`, conf/ema/posthoc.yaml), or one
                   reconstructed after training by explore.posthoc
                   (<run>/phema/reconstructed/epoch_NNNN_phema@<sigma_rel>.pt)

One EMA training run yields every column of the study's table: averaging never changes the
gradient path, so `raw` of an EMA run is exactly the model trained without EMA.

Works for this harness's checkpoints and for the original study's (`model_state`,
`ema_state` = {decay, shadow}, `ema_decay`, `epochs`), which carry no update counter: their EMA
share is estimated from the epoch and the optimizer steps per epoch.

Each averaged set says how much of it comes from trained weights (`share`, 1 - the weight its
averaging profile puts on the initial weights: 1 - decay^n for a plain EMA, 1 for warmed-up,
bias-corrected, power-function and post-hoc EMAs, which drop the initial weights) and how far it
lags the raw weights (`window_steps`: 1/(1 - decay) for an exponential EMA, sigma_rel * t for a
power profile at step t; `lag_epochs` = window / optimizer steps per epoch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from explore.core.errors import UserError
from explore.ema import (
    TrackInfo,
    averaging_window,
    copy_by_name,
    ema_name,
    strip_prefixes,
    track_info,
)
from explore.ema.length import RAW, Length
from explore.run.folder import RunFolder

log = logging.getLogger("explore.weights")



class WeightsError(UserError):
    pass


@dataclass
class WeightSet:
    name: str                          # raw, ema, ema@0.999, phema@0.1
    tensors: dict[str, torch.Tensor]   # state_dict entries to load (by name)
    decay: float | None = None         # exponential decay (None: raw, or a power profile)
    updates: int | None = None         # optimizer steps the average has seen (None: unknown)
    estimated: bool = False            # `updates` was estimated from epoch x steps/epoch
    init_weight: float | None = None   # weight on the initial weights (None: decay**updates)
    window: float | None = None        # averaging window in optimizer steps (None: 1/(1-decay))
    sigma_rel: float | None = None     # power-function profiles
    reconstructed: bool = False        # made by explore.posthoc, not tracked during training
    info: TrackInfo | None = None      # the state it was read from (None: raw)

    def length(self, step: int | None) -> Length | None:
        """Its EMA length at optimizer `step` (sigma_rel, half-life); raw weights: 0."""
        if self.info is None:
            return RAW
        return self.info.length(step) if step else None

    @property
    def is_ema(self) -> bool:
        return self.name != "raw"

    @property
    def share(self) -> float | None:
        """Share of the average from weights after its initialisation: 1 - init_weight, or
        1 - decay**updates for a plain EMA state without it."""
        if self.init_weight is not None:
            return 1.0 - self.init_weight
        if self.decay is None or self.updates is None:
            return None
        return 1.0 - self.decay ** self.updates

    @property
    def window_steps(self) -> float | None:
        if self.window is not None:
            return self.window
        return averaging_window(self.decay) if self.decay is not None else None

    def lag_epochs(self, steps_per_epoch: int | None) -> float | None:
        """The averaging window in epochs."""
        window = self.window_steps
        if window is None or not steps_per_epoch:
            return None
        return window / steps_per_epoch

    def describe(self) -> str:
        """What kind of average this is, for the log."""
        if not self.is_ema:
            return "raw weights"
        if self.sigma_rel is not None:
            how = "reconstructed post-hoc" if self.reconstructed else "power-function"
            return f"{how} EMA sigma_rel {self.sigma_rel:g}"
        if self.info is not None and self.info.kind == "bema":
            return "BEMA (bias-corrected EMA)"
        return f"EMA decay {self.decay}"


def _from_info(name: str, info: TrackInfo, reconstructed: bool = False) -> WeightSet:
    """A weight set from one EMA state read by explore.ema.track_info."""
    if info.kind == "phema":
        return WeightSet(name, info.shadow, None, info.updates, False, info.init_weight,
                         info.window_steps, info.sigma_rel, reconstructed, info)
    if info.kind == "bema":  # no single decay: mu's window of its last update is its lag
        return WeightSet(name, info.shadow, None, info.updates, False, info.init_weight,
                         info.window_steps, info=info)
    return WeightSet(name, info.shadow, info.decay, info.updates, info.estimated,
                     info.init_weight, info=info)


def _from_state(name: str, ema_state: dict, state: dict, steps_per_epoch: int | None
                ) -> WeightSet:
    """A weight set from one EMA state (ema_state or an entry of emas)."""
    return _from_info(name, track_info(ema_state, state, steps_per_epoch))


def weight_sets(state: dict, steps_per_epoch: int | None = None) -> dict[str, WeightSet]:
    """All weight sets of a loaded checkpoint, `raw` first, then `ema` (the primary
    exponential EMA), the other tracked decays, the tracked power-function EMAs and a BEMA."""
    sets = {"raw": WeightSet("raw", state["model_state"])}
    ema_state = state.get("ema_state")
    if not ema_state:
        return sets
    info = track_info(ema_state, state, steps_per_epoch)
    primary = None
    if info.kind == "ema":
        sets["ema"] = _from_info("ema", info)
        primary = info.name or ema_name(info.decay)
    for name, sub in (state.get("emas") or {}).items():
        if name != primary:  # the primary is `ema` already: one evaluation per average
            sets[name] = _from_state(name, sub, state, steps_per_epoch)
    if info.kind != "ema" and info.name not in sets:  # a primary phema or BEMA
        sets[info.name] = _from_info(info.name, info)
    return sets


def reconstructed_sets(run_dir: str | Path, epoch: int, have: dict[str, WeightSet] | None = None
                       ) -> dict[str, WeightSet]:
    """The post-hoc EMAs explore.posthoc reconstructed for `epoch` of a run, by name; a name the
    checkpoint tracks itself (`have`) keeps the tracked weights (the reconstruction of a tracked
    profile is a check of the method, not another weight set)."""
    sets: dict[str, WeightSet] = {}
    for path in RunFolder(run_dir).reconstructions(epoch):
        try:  # memory-mapped: the tensors are read when the set is loaded into the model
            rec = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is named and skipped
            log.warning("skipping unreadable post-hoc EMA %s: %s", path, e)
            continue
        info = track_info(rec)
        name = info.name
        if have and name in have:
            log.info("%s is tracked in the checkpoint: evaluating the tracked weights, not the "
                     "reconstruction %s", name, path.name)
            continue
        sets[name] = _from_info(name, info, reconstructed=True)
    return sets


def select(sets: dict[str, WeightSet], wanted: list[str] | None, source: str
           ) -> list[WeightSet]:
    """The requested weight sets (all when `wanted` is empty), with an error naming the
    missing ones and what the checkpoint has."""
    if not wanted:
        return list(sets.values())
    missing = [w for w in wanted if w not in sets]
    if missing:
        hint = (" (it was trained without EMA: ema=off)" if "ema" in missing and len(sets) == 1
                else "")
        if any(w.startswith("phema@") for w in missing):
            hint += (" (post-hoc EMAs appear once reconstructed: python -m explore.posthoc "
                     "run_dir=<run> sigma_rel=[...] epochs=all)")
        raise WeightsError(f"eval.weights asks for {missing}, but {source} holds only "
                           f"{list(sets)}{hint}")
    return [sets[w] for w in wanted]


@torch.no_grad()
def load_weights(model: nn.Module, weights: WeightSet, raw: dict[str, torch.Tensor]) -> None:
    """Load `raw` (the model_state) and then overwrite with the weight set's tensors, by name.

    EMA shadows hold floating entries only (or, in the original study, parameters only): every
    other entry comes from the raw state.
    """
    load_state(model, raw, source="model_state")
    if weights.name == "raw":
        return
    copy_by_name(model.state_dict(), weights.tensors, f"weight set {weights.name!r}",
                 WeightsError)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict by name (wrapper prefixes stripped) with an error that says which
    entries do not fit, instead of torch's wall of names."""
    state = {strip_prefixes(k): v for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        detail = " ".join(str(e).split())[:300]
        raise WeightsError(f"{source} does not fit {type(model).__name__}: {detail}") from e
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(f"{source} does not fit {type(model).__name__}: "
                           f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[:2]}),"
                           f" {len(result.unexpected_keys)} unexpected (e.g. "
                           f"{result.unexpected_keys[:2]}); is it another model or size?")
