"""Weight sets of a checkpoint: the raw weights and every EMA it holds, by name.

    raw         model_state: the weights the optimizer produced ("without EMA")
    ema         ema_state: the run's EMA ("with EMA"; decay in ema_state['decay'])

One EMA training run yields both columns of the study's table: EMA never changes the gradient
path, so `raw` of an EMA run is exactly the model trained without EMA.

Works for this harness's checkpoints and for the original study's (`model_state`,
`ema_state` = {decay, shadow}, `ema_decay`, `epochs`), which carry no update counter: their EMA
share is estimated from the epoch and the optimizer steps per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .ema import averaging_window, strip_prefixes
from .errors import UserError


class WeightsError(UserError):
    pass


@dataclass
class WeightSet:
    name: str                          # raw, ema (later: ema@0.999, phema@0.10)
    tensors: dict[str, torch.Tensor]   # state_dict entries to load (by name)
    decay: float | None = None         # EMA decay (None: raw, or not an exponential EMA)
    updates: int | None = None         # optimizer steps the EMA has averaged (None: unknown)
    estimated: bool = False            # `updates` was estimated from epoch x steps/epoch

    @property
    def is_ema(self) -> bool:
        return self.name != "raw"

    @property
    def share(self) -> float | None:
        """Share of the EMA from weights after its initialisation: 1 - decay**updates."""
        if self.decay is None or self.updates is None:
            return None
        return 1.0 - self.decay ** self.updates

    def lag_epochs(self, steps_per_epoch: int | None) -> float | None:
        """The averaging window 1/(1 - decay) in epochs."""
        if self.decay is None or not steps_per_epoch:
            return None
        return averaging_window(self.decay) / steps_per_epoch


def _ema_updates(ema_state: dict, state: dict, steps_per_epoch: int | None) -> tuple[int | None,
                                                                                     bool]:
    if "num_updates" in ema_state:
        return int(ema_state["num_updates"]) * int(ema_state.get("update_every", 1)), False
    epoch = state.get("epoch", state.get("epochs"))
    if epoch is not None and steps_per_epoch:
        return int(epoch) * int(steps_per_epoch), True
    return None, False


def weight_sets(state: dict, steps_per_epoch: int | None = None) -> dict[str, WeightSet]:
    """All weight sets of a loaded checkpoint, `raw` first."""
    sets = {"raw": WeightSet("raw", state["model_state"])}
    ema_state = state.get("ema_state")
    if ema_state:
        updates, estimated = _ema_updates(ema_state, state, steps_per_epoch)
        decay = float(ema_state.get("decay", state.get("ema_decay")))
        sets["ema"] = WeightSet("ema", ema_state["shadow"], decay, updates, estimated)
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
    own = model.state_dict()
    tensors = {strip_prefixes(k): v for k, v in weights.tensors.items()}
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise WeightsError(f"weight set {weights.name!r} has entries the model lacks, e.g. "
                           f"{unknown[:3]}")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise WeightsError(f"weight set {weights.name!r}: {k} has shape {tuple(v.shape)}, "
                               f"the model's is {tuple(own[k].shape)}")
        own[k].copy_(v)


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
