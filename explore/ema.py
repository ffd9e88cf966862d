"""Exponential moving average of a model's weights.

    ema = EMA(model, decay=0.9999)
    ...
    optimizer.step(); ema.update()          # after every optimizer step
    with ema.average_parameters():          # evaluate with EMA weights, raw ones put back after
        sample(model)
    torch.save({"ema_state": ema.state_dict(), ...})

What is averaged: every floating-point entry of the model's state_dict, by name (parameters and
floating buffers); non-floating buffers (counters, masks) are copied from the model, because
integers cannot be meaningfully interpolated. The shadow starts from the model's weights at
construction (the initial weights), is kept in float32 whatever the model's dtype (with
decay >= 0.999, a bf16/fp16 shadow would round the update (1 - decay) * delta away), and is
updated in place with one `torch._foreach_lerp_` per (device, dtype) group: no allocation per step.

Counting is in optimizer steps (calls to `update()`), so gradient accumulation is handled by
calling `update()` once per optimizer step, not per micro-batch:

- `start_step`: for the first `start_step` optimizer steps the shadow just follows the raw
  weights (it is a copy); averaging starts after that, so the EMA "initial weights" are the
  weights at `start_step`.
- `update_every` N: average every N optimizer steps with decay**N, so the EMA length in optimizer
  steps is the same as with N = 1 (a plain decay with N > 1 would make it N times longer: a trap
  of several public EMA libraries).

Averaging window 1/(1 - decay) optimizer steps; after n steps the share of the EMA that comes
from weights after its initialisation is 1 - decay**n (the "EMA hides training progress" failure
is evaluating an EMA whose share is still small).

The EMA must be built on the unwrapped model (not on a DDP or torch.compile wrapper) after the
model has been moved to its device; shadows live on the model's device.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def strip_prefixes(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return name


def check_decay(decay: float) -> float:
    decay = float(decay)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    return decay


def averaging_window(decay: float) -> float:
    """1 / (1 - decay): the EMA's averaging window in optimizer steps."""
    return math.inf if decay >= 1 else 1.0 / (1.0 - decay)


class _LiveTensors:
    """The model's state_dict entries as live tensors, split into floating and other.

    Parameters are held as objects (they survive `model.to()`); buffers are looked up on their
    module on each call, because `.to()` replaces buffer tensors.
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

    def floats(self) -> list[torch.Tensor]:
        return [g().detach() for g in self._float_getters]

    def others(self) -> list[torch.Tensor]:
        return [g().detach() for g in self._other_getters]


class EMA:
    """EMA of a model's floating state_dict entries (see the module docstring)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, start_step: int = 0,
                 update_every: int = 1):
        if int(start_step) < 0:
            raise ValueError(f"EMA start_step must be >= 0, got {start_step}")
        if int(update_every) < 1:
            raise ValueError(f"EMA update_every must be >= 1, got {update_every}")
        self.decay = check_decay(decay)
        self.start_step = int(start_step)
        self.update_every = int(update_every)
        self.step = 0          # optimizer steps seen (calls to update())
        self.num_updates = 0   # averaging updates applied
        self.live = _LiveTensors(model)
        with torch.no_grad():
            self._shadow = [t.detach().clone().float() for t in self.live.floats()]
            self._other = [t.detach().clone() for t in self.live.others()]
        self._groups = self._group_by_device_dtype()
        self._backup: list[torch.Tensor] | None = None

    # -- the shadow -------------------------------------------------------------------------
    @property
    def shadow(self) -> dict[str, torch.Tensor]:
        """name -> float32 shadow tensor (the tensors themselves, not copies)."""
        return dict(zip(self.live.float_names, self._shadow))

    def _group_by_device_dtype(self) -> list[tuple[list[int], bool]]:
        """Indices of live float tensors grouped by (device, dtype); flag: needs a cast."""
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(self.live.floats()):
            groups.setdefault((t.device, t.dtype), []).append(i)
        return [(idx, dtype != torch.float32) for (_, dtype), idx in groups.items()]

    # -- updating ---------------------------------------------------------------------------
    @property
    def effective_decay(self) -> float:
        """Decay per averaging update: decay**update_every."""
        return self.decay ** self.update_every

    @torch.no_grad()
    def update(self) -> None:
        """Call once after every optimizer step."""
        self.step += 1
        if self.step <= self.start_step:
            self.copy_from_model()
            return
        if (self.step - self.start_step) % self.update_every:
            return
        live = self.live.floats()
        weight = 1.0 - self.effective_decay
        for idx, cast in self._groups:
            src = [live[i].float() if cast else live[i] for i in idx]
            torch._foreach_lerp_([self._shadow[i] for i in idx], src, weight)
        self._copy_others()
        self.num_updates += 1

    @torch.no_grad()
    def copy_from_model(self) -> None:
        torch._foreach_copy_(self._shadow, [t.float() for t in self.live.floats()])
        self._copy_others()

    def _copy_others(self) -> None:
        if self._other:
            torch._foreach_copy_(self._other, self.live.others())

    # -- what an EMA number means ------------------------------------------------------------
    @property
    def window_steps(self) -> float:
        """Averaging window 1/(1 - decay), in optimizer steps."""
        return averaging_window(self.decay)

    @property
    def share_post_init(self) -> float:
        """Share of the EMA that comes from weights after its initialisation: 1 - decay**n."""
        return 1.0 - self.effective_decay ** self.num_updates

    # -- evaluating with EMA weights ---------------------------------------------------------
    @torch.no_grad()
    def apply(self) -> None:
        """Copy the EMA weights into the model, keeping the raw ones for `restore()`."""
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
        """Evaluate with the EMA weights inside the block; the raw weights come back after."""
        self.apply()
        try:
            yield
        finally:
            self.restore()

    @property
    def applied(self) -> bool:
        return self._backup is not None

    # -- diagnostics ---------------------------------------------------------------------------
    @torch.no_grad()
    def delta_stats(self) -> dict[str, float]:
        """Distances between raw and EMA weights over all floating entries.

        mean_abs = mean|ema - raw|, rms = sqrt(mean (ema - raw)^2), rel_rms = rms / rms(raw),
        max_abs = max|ema - raw|, and share = 1 - decay**n.
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

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """{decay, shadow: name -> tensor, ...}: the original study's layout plus counters."""
        return {"decay": self.decay, "shadow": self.shadow,
                "buffers": dict(zip(self.live.other_names, self._other)),
                "step": self.step, "num_updates": self.num_updates,
                "start_step": self.start_step, "update_every": self.update_every}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Load a state from `state_dict()` or from the original study ({decay, shadow}).

        Tensors are matched by name (DDP/compile prefixes stripped); a name the model does not
        have, a shape mismatch, or a missing parameter is an error that names the entries.
        Counters missing from an original-study state are left at 0.
        """
        if not isinstance(state, dict) or "shadow" not in state:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not an EMA state (expected keys 'decay' and 'shadow'): {keys}")
        shadow = {strip_prefixes(k): v for k, v in state["shadow"].items()}
        mine = self.shadow
        unknown = sorted(set(shadow) - set(mine))
        if unknown:
            raise ValueError(f"EMA state has {len(unknown)} entries the model does not have, "
                             f"e.g. {unknown[:3]}: is it from another model?")
        missing = [k for k in mine if k not in shadow]
        param_names = {strip_prefixes(n) for n, _ in self.live.model.named_parameters()}
        missing_params = [k for k in missing if k in param_names]
        if missing_params:
            raise ValueError(f"EMA state lacks {len(missing_params)} parameters, "
                             f"e.g. {missing_params[:3]}")
        for k, v in shadow.items():
            if tuple(v.shape) != tuple(mine[k].shape):
                raise ValueError(f"EMA state entry {k!r} has shape {tuple(v.shape)}, "
                                 f"the model's is {tuple(mine[k].shape)}")
            mine[k].copy_(v)
        # floating buffers an original-study shadow did not hold start from the model's values
        live = dict(zip(self.live.float_names, self.live.floats()))
        for k in missing:
            mine[k].copy_(live[k])
        for k, v in state.get("buffers", {}).items():
            k = strip_prefixes(k)
            if k in self.live.other_names:
                self._other[self.live.other_names.index(k)].copy_(v)
        self.decay = check_decay(state.get("decay", self.decay))
        self.step = int(state.get("step", 0))
        self.num_updates = int(state.get("num_updates", 0))
        self.start_step = int(state.get("start_step", self.start_step))
        self.update_every = int(state.get("update_every", self.update_every))
