"""The tensor bookkeeping every average shares: the model's live tensors, one float32 shadow of
them (`Track`), and copying tensors by name.

What is averaged: every floating-point entry of the model's state_dict, by name (parameters and
floating buffers); non-floating buffers (counters, masks) are copied from the model, because
integers cannot be meaningfully interpolated. Every shadow starts from the model's weights at
construction (the initial weights), is kept in float32 whatever the model's dtype (with
decay >= 0.999, a bf16/fp16 shadow would round the update (1 - decay) * delta away), and is
updated in place with one `torch._foreach_lerp_` per (device, dtype) group: no allocation per
step. A bank casts the model's weights to float32 once per step for all its shadows, then runs
one foreach kernel per shadow. Everything runs under no_grad: no shadow is ever in autograd.

How a track moves at each optimizer step is its subclass's business (`_advance`):
`exponential.EMA` and `power.PowerEMA`; `bema.BEMA` also replaces `_absorb` (it keeps two more
float32 buffers).

The EMA must be built on the unwrapped model (not on a DDP or torch.compile wrapper) after the
model has been moved to its device; shadows live on the model's device. Names are stored without
wrapper prefixes (`module.`, `_orig_mod.`), and states saved with them load all the same.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from explore.core.errors import UserError

_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


class EMAStateError(UserError, ValueError):
    """An EMA state that does not fit the EMA being loaded; the message says why."""


def strip_prefixes(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return name


@torch.no_grad()
def copy_by_name(dst: dict[str, torch.Tensor], src: dict[str, torch.Tensor], label: str,
                 error: type[Exception], required=()) -> None:
    """Copy `src` into `dst`'s tensors by name (wrapper prefixes stripped). A name `dst` lacks,
    a `required` name `src` lacks, or a shape that differs raises `error`, naming the entries,
    before anything is copied."""
    src = {strip_prefixes(k): v for k, v in src.items()}
    unknown = sorted(set(src) - set(dst))
    if unknown:
        raise error(f"{label} has {len(unknown)} entries the model does not have, e.g. "
                    f"{unknown[:3]}: is it from another model?")
    lacking = sorted(k for k in required if k not in src)
    if lacking:
        raise error(f"{label} lacks {len(lacking)} parameters, e.g. {lacking[:3]}")
    for k, v in src.items():
        if tuple(v.shape) != tuple(dst[k].shape):
            raise error(f"{label} entry {k!r} has shape {tuple(v.shape)}, the model's is "
                        f"{tuple(dst[k].shape)}")
    for k, v in src.items():
        dst[k].copy_(v)


# -- the model's live tensors ----------------------------------------------------------------------
class LiveTensors:
    """The model's state_dict entries as live tensors, split into floating and other.

    Parameters are held as objects (they survive `model.to()`); buffers are looked up on their
    module on each call, because `.to()` replaces buffer tensors. `groups` are the indices of
    the floating tensors per (device, dtype), each flagged when it needs a cast to float32.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.float_names: list[str] = []
        self.other_names: list[str] = []
        self._float_getters: list = []
        self._other_getters: list = []
        params = {id(p): p for p in model.parameters()}
        for name, tensor in model.state_dict(keep_vars=True).items():
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name) if module_name else model
            if id(tensor) in params:
                getter = (lambda p: (lambda: p))(tensor)
            else:
                getter = (lambda m, a: (lambda: m._buffers[a]))(module, attr)
            key = strip_prefixes(name)
            if tensor.is_floating_point():
                self.float_names.append(key)
                self._float_getters.append(getter)
            else:
                self.other_names.append(key)
                self._other_getters.append(getter)
        grouped: dict[tuple, list[int]] = {}
        for i, t in enumerate(self.floats()):
            grouped.setdefault((t.device, t.dtype), []).append(i)
        self.groups = [(idx, dtype != torch.float32) for (_, dtype), idx in grouped.items()]

    def floats(self) -> list[torch.Tensor]:
        return [g().detach() for g in self._float_getters]

    def others(self) -> list[torch.Tensor]:
        return [g().detach() for g in self._other_getters]

    def sources(self) -> list[list[torch.Tensor]]:
        """The floating tensors per group, as float32 (cast once, shared by every shadow)."""
        live = self.floats()
        return [[live[i].float() if cast else live[i] for i in idx] for idx, cast in self.groups]

    def param_names(self) -> set[str]:
        return {strip_prefixes(n) for n, _ in self.model.named_parameters()}


# -- one averaged copy of the weights --------------------------------------------------------------
class Track:
    """One float32 shadow of the model's floating entries and its counters.

    Subclasses say how each optimizer step updates it (`_advance`): not at all (None), by a lerp
    towards the raw weights with weight w in (0, 1), or by a copy of them (w = 1, done as an
    exact copy). A subclass with its own `_absorb` may return anything else that is not None:
    the bank hands it to that `_absorb` with the float32 sources.
    """

    kind = ""

    def __init__(self, live: LiveTensors, update_every: int):
        if int(update_every) < 1:
            raise ValueError(f"EMA update_every must be >= 1, got {update_every}")
        self.live = live
        self.update_every = int(update_every)
        self.step = 0             # optimizer steps seen (calls to update())
        self.num_updates = 0      # averaging updates applied
        self.decay_product = 1.0  # prod of the decays applied: weight left on the initial weights
        self.last_decay: float | None = None
        with torch.no_grad():
            self._shadow = [t.detach().clone().float() for t in live.floats()]
            self._other = [t.detach().clone() for t in live.others()]
        self._grouped = [[self._shadow[i] for i in idx] for idx, _ in live.groups]
        self._backup: list[torch.Tensor] | None = None

    # -- identity ----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        raise NotImplementedError

    def _advance(self) -> float | None:
        raise NotImplementedError

    @property
    def window_steps(self) -> float:
        raise NotImplementedError

    # -- the shadow --------------------------------------------------------------------------------
    @property
    def shadow(self) -> dict[str, torch.Tensor]:
        """name -> float32 shadow tensor (the tensors themselves, not copies)."""
        return dict(zip(self.live.float_names, self._shadow))

    @torch.no_grad()
    def _absorb(self, sources: list[list[torch.Tensor]], others: list[torch.Tensor],
                weight: float) -> None:
        """shadow <- lerp(shadow, raw, weight): one foreach kernel per (device, dtype) group."""
        for shadows, src in zip(self._grouped, sources):
            if weight == 1.0:  # the raw weights themselves, exactly (start_step, first update)
                torch._foreach_copy_(shadows, src)
            else:
                torch._foreach_lerp_(shadows, src, weight)
        if self._other:
            torch._foreach_copy_(self._other, others)

    # -- what an EMA number means ------------------------------------------------------------------
    @property
    def init_weight(self) -> float:
        """Weight the average puts on the initial weights (0 when they have been dropped)."""
        return self.decay_product

    @property
    def share_post_init(self) -> float:
        """Share of the average that comes from weights after its initialisation."""
        return 1.0 - self.init_weight

    # -- evaluating with the averaged weights ------------------------------------------------------
    @torch.no_grad()
    def apply(self) -> None:
        """Copy the averaged weights into the model, keeping the raw ones for `restore()`."""
        if self._backup is not None:
            raise RuntimeError("EMA.apply() called twice without restore(): the raw weights "
                               "would be lost")
        live = self.live.floats()
        self._backup = [t.clone() for t in live]
        for dst, src in zip(live, self._shadow):
            dst.copy_(src)

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the raw weights saved by `apply()`."""
        if self._backup is None:
            raise RuntimeError("EMA.restore() called without a matching apply()")
        for dst, src in zip(self.live.floats(), self._backup):
            dst.copy_(src)
        self._backup = None

    @contextlib.contextmanager
    def average_parameters(self) -> Iterator[None]:
        """Evaluate with the averaged weights inside the block; the raw weights come back after."""
        self.apply()
        try:
            yield
        finally:
            self.restore()

    @property
    def applied(self) -> bool:
        return self._backup is not None

    # -- diagnostics -------------------------------------------------------------------------------
    @torch.no_grad()
    def delta_stats(self) -> dict[str, float]:
        """Distances between raw and averaged weights over all floating entries.

        mean_abs = mean|ema - raw|, rms = sqrt(mean (ema - raw)^2), rel_rms = rms / rms(raw),
        max_abs = max|ema - raw|, and share = 1 - (weight on the initial weights).
        """
        if self.applied:
            raise RuntimeError("EMA.delta_stats() while EMA weights are applied: restore() first")
        n, abs_sum, sq_sum, raw_sq, max_abs = 0, 0.0, 0.0, 0.0, 0.0
        for raw, ema in zip(self.live.floats(), self._shadow):
            d = ema - raw.float()
            n += d.numel()
            abs_sum += d.abs().sum().item()
            sq_sum += d.square().sum().item()
            raw_sq += raw.float().square().sum().item()
            max_abs = max(max_abs, d.abs().max().item()) if d.numel() else max_abs
        rms = math.sqrt(sq_sum / max(n, 1))
        raw_rms = math.sqrt(raw_sq / max(n, 1))
        return {"mean_abs_delta": abs_sum / max(n, 1), "rms_delta": rms,
                "rel_rms_delta": rms / raw_rms if raw_rms > 0 else math.nan,
                "max_abs_delta": max_abs, "share": self.share_post_init}

    # -- state (the layout is read by explore.ema.state) -------------------------------------------
    def _common_state(self) -> dict:
        return {"kind": self.kind, "name": self.name, "shadow": self.shadow,
                "buffers": dict(zip(self.live.other_names, self._other)),
                "step": self.step, "num_updates": self.num_updates,
                "update_every": self.update_every, "decay_product": self.decay_product,
                "init_weight": self.init_weight, "window_steps": self.window_steps}

    @torch.no_grad()
    def _load_tensors(self, state: dict) -> None:
        """Shadow and buffers by name (DDP/compile prefixes stripped); a name the model does
        not have, a shape mismatch, or a missing parameter is an error that names the entries.
        Floating buffers a state lacks (the original study kept parameters only) start from the
        model's values."""
        if not isinstance(state, dict) or "shadow" not in state:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise EMAStateError(f"not an EMA state (expected keys 'decay' and 'shadow'): {keys}")
        kind = state.get("kind", "ema")
        if kind != self.kind:
            raise EMAStateError(f"EMA state {state.get('name', '')!r} is a {kind!r} average, "
                                f"this is a {self.kind!r} one")
        shadow = {strip_prefixes(k): v for k, v in state["shadow"].items()}
        mine = self.shadow
        copy_by_name(mine, shadow, "EMA state", EMAStateError, required=self.live.param_names())
        missing = [k for k in mine if k not in shadow]
        live = dict(zip(self.live.float_names, self.live.floats()))
        for k in missing:
            mine[k].copy_(live[k])
        for k, v in state.get("buffers", {}).items():
            k = strip_prefixes(k)
            if k in self.live.other_names:
                self._other[self.live.other_names.index(k)].copy_(v)
        self.step = int(state.get("step", 0))
        self.num_updates = int(state.get("num_updates", 0))
        self.update_every = int(state.get("update_every", self.update_every))
        self.last_decay = state.get("last_decay", state.get("decay"))
