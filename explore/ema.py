"""Moving averages of a model's weights: one exponential EMA, a bank of several decays, and
power-function EMAs whose snapshots allow post-hoc EMA (Karras et al. 2024, "Analyzing and
Improving the Training Dynamics of Diffusion Models", EDM2).

    ema = EMA(model, decay=0.9999)                          # conf/ema/on.yaml
    ema = EMABank(model, decays=[0.99, 0.999, 0.9999])      # conf/ema/multi.yaml
    ema = PostHocEMA(model, sigma_rels=[0.05, 0.10])        # conf/ema/posthoc.yaml
    ema.bind(run_dir, total_steps)          # where (and how often) PostHocEMA snapshots
    ...
    optimizer.step(); ema.update()          # after every optimizer step
    with ema.average_parameters():          # evaluate with EMA weights, raw ones put back after
        sample(model)
    torch.save({**ema.checkpoint_entries(), ...})      # ema_state, ema_decay, emas
    ema.load_checkpoint_entries(saved)                 # exact resume of every track

What is averaged: every floating-point entry of the model's state_dict, by name (parameters and
floating buffers); non-floating buffers (counters, masks) are copied from the model, because
integers cannot be meaningfully interpolated. Every shadow starts from the model's weights at
construction (the initial weights), is kept in float32 whatever the model's dtype (with
decay >= 0.999, a bf16/fp16 shadow would round the update (1 - decay) * delta away), and is
updated in place with one `torch._foreach_lerp_` per (device, dtype) group: no allocation per
step. A bank casts the model's weights to float32 once per step for all its shadows, then runs
one foreach kernel per shadow. Everything runs under no_grad: no shadow is ever in autograd.

Counting is in optimizer steps (calls to `update()`), so gradient accumulation is handled by
calling `update()` once per optimizer step, not per micro-batch:

- `start_step`: for the first `start_step` optimizer steps the shadow just follows the raw
  weights (it is a copy); averaging starts after that, so the EMA "initial weights" are the
  weights at `start_step`.
- `update_every` N: average every N optimizer steps with decay**N, so the EMA length in optimizer
  steps is the same as with N = 1 (a plain decay with N > 1 would make it N times longer: a trap
  of several public EMA libraries).

Exponential EMA (`EMA`; `EMABank` holds one per decay). Averaging update n, with decay d_n:

    shadow_n = d_n * shadow_{n-1} + (1 - d_n) * theta_n      (lerp with weight 1 - d_n)
    d_n = d(t) ** update_every,   t = optimizer steps averaged before this update (0, N, 2N, ...)
    d(t) = decay                                               warmup=null (default)
    d(t) = min(decay, (1 + t) / (10 + t))                      warmup=cap (diffusers' default)
    d(t) = clip(1 - (1 + t / inv_gamma) ** -power, min_decay, decay)
                                                               warmup=power (timm ModelEmaV3,
                                                               diffusers use_ema_warmup)
    with a warm-up, d(0) = 0: the first averaged update takes the raw weights (timm, diffusers).

bias_correction=true (off by default): the Adam-style debiased EMA. Zero-initialise an
accumulator m_n = d_n m_{n-1} + (1 - d_n) theta_n and divide by its total weight
1 - prod_k d_k (1 - decay**n for a constant decay). The same numbers come from a lerp of the
debiased shadow itself with weight w_n = (1 - d_n) / (1 - prod_{k<=n} d_k) (w_1 = 1: the first
update is the raw weights), which is what is done: the shadow is always the evaluable average,
no division at evaluation, and the initial weights get weight 0.

Share of post-init weight (what the "EMA hides training progress" guard checks):
share = 1 - (weight the averaging profile puts on the initial weights), i.e.

    plain EMA                     1 - prod_k d_k = 1 - decay**n  (n optimizer steps averaged)
    warm-up or bias correction    1  (d(0) = 0 resp. w_1 = 1 drop the initial weights)
    power-function / post-hoc     1  (beta_1 = 0, see below: the profile is 0 at t = 0)

and the averaging window (lag) in optimizer steps is 1/(1 - decay) for an exponential EMA and
sigma_rel * t for a power EMA at step t (the std of its profile, EDM2's definition of length).
The guard therefore never fires for power-function EMAs: their length is a fixed fraction of
the run so far, so they never lag into the initialisation the way a long exponential EMA of a
short run does (seed 004: decay 0.999 after 128 steps was 88% initial weights); their lag is
what to read.

Power-function EMA (`PowerEMA`; `PostHocEMA` holds one per sigma_rel, EDM2 eq. 121-127): after
t optimizer steps the average has the profile p(tau) = (gamma + 1) tau**gamma / t**(gamma + 1) on
[0, t], reached by the update beta_t = (1 - N / t) ** (gamma + 1) every N optimizer steps
(beta = 0 at the first update, so nothing of the initialisation is left). The weight of the raw
weights after step k is exactly the integral of p over (k - N, k]. Its relative std is

    sigma_rel = sqrt((gamma + 1) / ((gamma + 2)**2 (gamma + 3)))

and gamma for a given sigma_rel is the largest real root of x^3 + 7x^2 + (16 - s)x + (12 - s),
s = sigma_rel**-2 (EDM2 eq. 126). sigma_rel is at most SIGMA_REL_MAX ~ 0.30 (gamma =
(sqrt 5 - 3)/2, a near-uniform average of the whole run). EDM2 tracks 0.05 and 0.10; its
FID-optimal lengths run from 0.135 (XS model) to 0.070 (XXL).
`PostHocEMA` writes snapshots of its EMAs every `snapshot_every` optimizer steps to
`<run>/phema/snapshot_<step>.pt`; `explore.posthoc` combines them (and the tracked EMAs stored
in checkpoints) into the EMA of any other sigma_rel.

Checkpoint layout (`checkpoint_entries()`): `ema_state` = the primary track's state (the first
decay, or `primary`; the original study's {decay, shadow, ...} layout, so single-decay readers
keep working), `ema_decay` = its decay, and `emas` = {weight-set name: state} for every track,
e.g. {"ema@0.9999": ..., "ema@0.999": ...} or {"phema@0.05": ..., "phema@0.1": ...}; the
primary's state is the same object in both places, so torch.save stores its tensors once.

The EMA must be built on the unwrapped model (not on a DDP or torch.compile wrapper) after the
model has been moved to its device; shadows live on the model's device.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .files import atomic_write

log = logging.getLogger("explore.ema")

_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
WARMUPS = ("cap", "power")
SNAPSHOT_DIR = "phema"
SNAPSHOT_FORMAT = "explore-phema-snapshot/1"
AUTO_SNAPSHOTS = 32  # snapshot_every=auto: this many snapshots over the planned run
# the largest relative std a power profile can have: at gamma* = (sqrt(5) - 3) / 2, the root of
# d/dgamma log sigma_rel**2 = 0, i.e. gamma**2 + 3 gamma + 1 = 0
_GAMMA_AT_MAX = (math.sqrt(5.0) - 3.0) / 2.0


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


def check_decay(decay: float) -> float:
    decay = float(decay)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    return decay


def averaging_window(decay: float) -> float:
    """1 / (1 - decay): the EMA's averaging window in optimizer steps."""
    return math.inf if decay >= 1 else 1.0 / (1.0 - decay)


def fmt_value(x: float) -> str:
    """Shortest faithful text of a decay or sigma_rel, as in weight-set names (0.9999, 0.1)."""
    return f"{float(x):.10g}"


def ema_name(decay: float) -> str:
    """Weight-set name of an exponential EMA: ema@0.999."""
    return f"ema@{fmt_value(decay)}"


def phema_name(sigma_rel: float) -> str:
    """Weight-set name of a power-function (post-hoc) EMA: phema@0.1."""
    return f"phema@{fmt_value(sigma_rel)}"


# -- power-function profiles (EDM2) ----------------------------------------------------------------
def gamma_to_sigma_rel(gamma: float) -> float:
    """sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))): the profile's std / t."""
    g = float(gamma)
    return math.sqrt((g + 1.0) / ((g + 2.0) ** 2 * (g + 3.0)))


SIGMA_REL_MAX = gamma_to_sigma_rel(_GAMMA_AT_MAX)


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma of the power profile with relative std `sigma_rel`: the largest real
    root of x^3 + 7x^2 + (16 - s)x + (12 - s), s = sigma_rel^-2 (EDM2 eq. 126)."""
    sigma_rel = float(sigma_rel)
    if not 0.0 < sigma_rel < SIGMA_REL_MAX:
        raise ValueError(f"sigma_rel must be in (0, {SIGMA_REL_MAX:.4f}), got {sigma_rel} "
                         f"(the longest power profile, a near-uniform average of the whole run, "
                         f"has sigma_rel {SIGMA_REL_MAX:.4f})")
    s = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def power_beta(gamma: float, step: int, interval: int = 1) -> float:
    """EDM2 eq. 127: the decay of the update at optimizer step `step` (1-based), made every
    `interval` steps, that keeps the power profile: (1 - interval / step) ** (gamma + 1)."""
    return (1.0 - interval / step) ** (gamma + 1.0)


def warmup_decay(rule: str | None, t: int, decay: float, inv_gamma: float = 1.0,
                 power: float = 2.0 / 3.0, min_decay: float = 0.0) -> float:
    """Decay of an exponential EMA after `t` averaged optimizer steps (see the module docstring):

        null:  decay
        cap:   min(decay, (1 + t) / (10 + t))
        power: clip(1 - (1 + t / inv_gamma) ** -power, min_decay, decay)

    With a rule, t = 0 gives 0 (the first averaged update is the raw weights), as timm and
    diffusers do; both rules are also floored at `min_decay`.
    """
    if rule is None:
        return decay
    if t <= 0:
        return 0.0
    if rule == "cap":
        d = (1.0 + t) / (10.0 + t)
    elif rule == "power":
        d = 1.0 - (1.0 + t / inv_gamma) ** -power
    else:
        raise ValueError(f"EMA warmup={rule!r}: use null, {' or '.join(WARMUPS)}")
    return max(min_decay, min(d, decay))


# -- the model's live tensors ----------------------------------------------------------------------
class _LiveTensors:
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
class _Track:
    """One float32 shadow of the model's floating entries and its counters.

    Subclasses say how each optimizer step updates it (`_advance`): not at all (None), by a lerp
    towards the raw weights with weight w in (0, 1), or by a copy of them (w = 1, done as an
    exact copy).
    """

    kind = ""

    def __init__(self, live: _LiveTensors, update_every: int):
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

    @torch.no_grad()
    def copy_from_model(self) -> None:
        self._absorb(self.live.sources(), self.live.others(), 1.0)

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

    # -- state -------------------------------------------------------------------------------------
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


# -- the training-loop interface, shared by a single EMA and the banks -----------------------------
class _Averaging:
    """What the training loop holds: `tracks` updated together after each optimizer step, one
    of which (`primary`) is the run's `ema_state`."""

    live: _LiveTensors
    tracks: list[_Track]
    primary: _Track

    @torch.no_grad()
    def update(self) -> None:
        """Call once after every optimizer step."""
        plan = [(track, track._advance()) for track in self.tracks]
        plan = [(track, w) for track, w in plan if w is not None]
        if not plan:
            return
        sources, others = self.live.sources(), self.live.others()
        for track, weight in plan:
            track._absorb(sources, others, weight)

    def bind(self, run_dir: str | Path, total_steps: int | None = None) -> None:
        """Tell the average its run folder and planned optimizer steps (only PostHocEMA uses
        them: snapshots go to <run>/phema/)."""

    def plan(self, total_steps: int) -> None:  # TEMP shim until the ema package lands
        pass

    def snapshot_due(self) -> bool:
        return False

    @property
    def decays(self) -> list[float]:
        """Decays of the exponential tracks, primary first."""
        return [t.decay for t in self._ordered() if t.kind == "ema"]

    @property
    def sigma_rels(self) -> list[float]:
        """sigma_rel of the power-function tracks, primary first."""
        return [t.sigma_rel for t in self._ordered() if t.kind == "phema"]

    def _ordered(self) -> list[_Track]:
        return [self.primary] + [t for t in self.tracks if t is not self.primary]

    def track(self, name: str) -> _Track:
        """The track named `name` (ema@0.999, phema@0.1)."""
        for t in self.tracks:
            if t.name == name:
                return t
        raise KeyError(f"no EMA track {name!r}; tracks: {[t.name for t in self.tracks]}")

    def metrics(self) -> dict[str, float]:
        """metrics.csv columns: ema_<stat> for the primary exponential track, ema_<stat>@<decay>
        for the other decays, phema_<stat>@<sigma_rel> for power-function tracks."""
        row: dict[str, float] = {}
        for t in self._ordered():
            suffix = "" if t is self.primary and t.kind == "ema" else "@" + t.name.split("@")[1]
            row.update({f"{t.kind}_{k}{suffix}": v for k, v in t.delta_stats().items()})
        return row

    def checkpoint_entries(self) -> dict:
        """ema_state (primary), ema_decay and emas (every track) for a training checkpoint."""
        states = {t.name: t.state_dict() for t in self.tracks}
        primary = states[self.primary.name]
        return {"ema_state": primary, "ema_decay": primary["decay"], "emas": states}

    def load_checkpoint_entries(self, saved: dict, source: str = "the checkpoint") -> None:
        """Restore every track from a checkpoint's `emas` (or, for a checkpoint without them,
        the primary from `ema_state`); a track the checkpoint lacks is an error."""
        ema_state = saved.get("ema_state")
        if ema_state is None:
            raise EMAStateError(f"{source} was trained without EMA (ema_state is empty)")
        if saved.get("emas"):
            states = saved["emas"]
        elif len(self.tracks) == 1:  # an older layout, or the original study's: ema_state only
            states = {self.primary.name: ema_state}
        else:
            states = {ema_state.get("name", "ema"): ema_state}
        missing = [t.name for t in self.tracks if t.name not in states]
        if missing:
            raise EMAStateError(f"{source} holds EMA tracks {sorted(states)}, not {missing}")
        for t in self.tracks:
            t.load_state_dict(states[t.name])


# -- exponential EMA -------------------------------------------------------------------------------
class EMA(_Track, _Averaging):
    """Exponential EMA of a model's floating state_dict entries (see the module docstring).

    decay: target decay; window 1/(1 - decay) optimizer steps.
    start_step, update_every: see the module docstring.
    warmup: null | cap | power (with inv_gamma, power, min_decay): the decay rule while young.
    bias_correction: debias as m_n / (1 - prod d_k), so the initial weights get weight 0.
    """

    kind = "ema"

    def __init__(self, model: nn.Module | None = None, decay: float = 0.9999,
                 start_step: int = 0, update_every: int = 1, warmup: str | None = None,
                 inv_gamma: float = 1.0, power: float = 2.0 / 3.0, min_decay: float = 0.0,
                 bias_correction: bool = False, *, live: _LiveTensors | None = None):
        if int(start_step) < 0:
            raise ValueError(f"EMA start_step must be >= 0, got {start_step}")
        if warmup is not None and warmup not in WARMUPS:
            raise ValueError(f"EMA warmup={warmup!r}: use null, {' or '.join(WARMUPS)}")
        if float(inv_gamma) <= 0 or float(power) <= 0:
            raise ValueError(f"EMA warmup needs inv_gamma > 0 and power > 0, got {inv_gamma}, "
                             f"{power}")
        super().__init__(live if live is not None else _LiveTensors(model), update_every)
        self.decay = check_decay(decay)
        self.min_decay = check_decay(min_decay)
        self.start_step = int(start_step)
        self.warmup = warmup
        self.inv_gamma, self.power = float(inv_gamma), float(power)
        self.bias_correction = bool(bias_correction)

    # a single EMA is its own (only) track
    @property
    def tracks(self) -> list[_Track]:
        return [self]

    @property
    def primary(self) -> _Track:
        return self

    @property
    def name(self) -> str:
        return ema_name(self.decay)

    @property
    def effective_decay(self) -> float:
        """Decay per averaging update once warmed up: decay**update_every."""
        return self.decay ** self.update_every

    def decay_at(self, t: int) -> float:
        """d(t) of the module docstring, before raising to update_every."""
        return warmup_decay(self.warmup, t, self.decay, self.inv_gamma, self.power,
                            self.min_decay)

    def _advance(self) -> float | None:
        self.step += 1
        if self.step <= self.start_step:
            return 1.0  # follow the raw weights until averaging starts
        since = self.step - self.start_step
        if since % self.update_every:
            return None
        d = (self.decay_at(since - self.update_every) ** self.update_every
             if self.warmup is not None else self.effective_decay)
        self.last_decay = d
        self.decay_product *= d
        self.num_updates += 1
        if self.bias_correction:
            return (1.0 - d) / (1.0 - self.decay_product)
        return 1.0 - d

    @property
    def init_weight(self) -> float:
        return 0.0 if self.bias_correction else self.decay_product

    @property
    def window_steps(self) -> float:
        """Averaging window 1/(1 - decay), in optimizer steps."""
        return averaging_window(self.decay)

    def planned_share(self, total_steps: int) -> float:
        """share_post_init after `total_steps` optimizer steps (warm-up ignored: it only drops
        the initial weights sooner)."""
        if self.bias_correction or self.warmup is not None:
            return 1.0
        return 1.0 - self.decay ** max(0, total_steps - self.start_step)

    def state_dict(self) -> dict:
        """{decay, shadow: name -> tensor, ...}: the original study's layout plus counters and
        the settings that change the numbers."""
        return {**self._common_state(), "decay": self.decay, "start_step": self.start_step,
                "warmup": self.warmup, "inv_gamma": self.inv_gamma, "power": self.power,
                "min_decay": self.min_decay, "bias_correction": self.bias_correction,
                "last_decay": self.last_decay}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Load a state from `state_dict()` or from the original study ({decay, shadow}).
        Counters missing from an original-study state are left at 0."""
        self._load_tensors(state)
        self.decay = check_decay(state.get("decay", self.decay))
        self.start_step = int(state.get("start_step", self.start_step))
        self.warmup = state.get("warmup", self.warmup)
        self.inv_gamma = float(state.get("inv_gamma", self.inv_gamma))
        self.power = float(state.get("power", self.power))
        self.min_decay = float(state.get("min_decay", self.min_decay))
        self.bias_correction = bool(state.get("bias_correction", self.bias_correction))
        # states written before decay_product was kept: a constant decay since start_step
        self.decay_product = float(state.get(
            "decay_product", self.effective_decay ** self.num_updates))
        if "last_decay" in state:
            self.last_decay = state["last_decay"]


# -- power-function EMA ----------------------------------------------------------------------------
class PowerEMA(_Track):
    """One power-function EMA (EDM2): beta_t = (1 - N / t) ** (gamma + 1) every N steps."""

    kind = "phema"

    def __init__(self, live: _LiveTensors, sigma_rel: float, update_every: int = 1):
        super().__init__(live, update_every)
        self.sigma_rel = float(sigma_rel)
        self.gamma = sigma_rel_to_gamma(self.sigma_rel)
        self.start_step = 0  # the profile starts at the first step by construction

    @property
    def name(self) -> str:
        return phema_name(self.sigma_rel)

    @property
    def decay(self) -> float | None:
        """The decay of the last update (it grows towards 1 as t grows)."""
        return self.last_decay

    def _advance(self) -> float | None:
        self.step += 1
        if self.step % self.update_every:
            return None
        beta = power_beta(self.gamma, self.step, self.update_every)
        self.last_decay = beta
        self.decay_product *= beta
        self.num_updates += 1
        return 1.0 - beta

    @property
    def window_steps(self) -> float:
        """The profile's std in optimizer steps: sigma_rel * t (0 before the first step)."""
        return self.sigma_rel * self.step

    def planned_share(self, total_steps: int) -> float:
        return 1.0

    def state_dict(self) -> dict:
        return {**self._common_state(), "decay": self.last_decay, "sigma_rel": self.sigma_rel,
                "gamma": self.gamma, "last_decay": self.last_decay}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        self._load_tensors(state)
        if "sigma_rel" in state and not math.isclose(float(state["sigma_rel"]), self.sigma_rel):
            raise EMAStateError(f"power EMA state has sigma_rel {state['sigma_rel']}, this "
                                f"track's is {self.sigma_rel}")
        self.decay_product = float(state.get("decay_product", 0.0))


# -- several tracks in one pass --------------------------------------------------------------------
class _Bank(_Averaging):
    """Several tracks over one view of the model, updated in one pass (one cast, one foreach
    kernel per shadow)."""

    def __init__(self, live: _LiveTensors, tracks: list[_Track], primary: int = 0):
        names = [t.name for t in tracks]
        if len(set(names)) != len(names):
            raise ValueError(f"EMA tracks repeat: {names}")
        if not tracks:
            raise ValueError("an EMA bank needs at least one track")
        self.live = live
        self.tracks = tracks
        self.primary = tracks[primary]

    @property
    def decay(self) -> float | None:
        return self.primary.decay

    @property
    def start_step(self) -> int:
        return self.primary.start_step

    @property
    def step(self) -> int:
        return self.primary.step

    def delta_stats(self) -> dict[str, float]:
        return self.primary.delta_stats()

    def average_parameters(self, name: str | None = None):
        """Evaluate with one track's weights inside the block (the primary's by default)."""
        return (self.track(name) if name else self.primary).average_parameters()

    def state_dict(self) -> dict:
        return {"primary": self.primary.name,
                "emas": {t.name: t.state_dict() for t in self.tracks}}

    def load_state_dict(self, state: dict) -> None:
        self.load_checkpoint_entries({"ema_state": state["emas"][state["primary"]], **state})


class EMABank(_Bank):
    """Exponential EMAs of several decays in one pass, so a decay sweep is one training run.

    decays: list of decays; `primary` (a decay, default the first) is the run's `ema_state`.
    The other settings are those of `EMA` and apply to every decay.

    Cost per decay (python -m explore.ema_overhead; LIFT 58.5M parameters, this 2-core CPU,
    torch 2.15): 223 MiB of float32 shadow and 23 ms per optimizer step with 2 threads (38 ms
    with 1), about 1.6% of a batch-4 training step (1.4 s); each update streams 12 bytes per
    parameter, so the time scales with memory bandwidth.
    """

    def __init__(self, model: nn.Module, decays: Sequence[float] = (0.999, 0.9999),
                 primary: float | None = None, start_step: int = 0, update_every: int = 1,
                 warmup: str | None = None, inv_gamma: float = 1.0, power: float = 2.0 / 3.0,
                 min_decay: float = 0.0, bias_correction: bool = False):
        decays = [check_decay(d) for d in decays]
        if primary is not None and check_decay(primary) not in decays:
            raise ValueError(f"EMA primary={primary} is not one of decays={decays}")
        live = _LiveTensors(model)
        tracks = [EMA(decay=d, start_step=start_step, update_every=update_every, warmup=warmup,
                      inv_gamma=inv_gamma, power=power, min_decay=min_decay,
                      bias_correction=bias_correction, live=live) for d in decays]
        super().__init__(live, tracks, decays.index(float(primary)) if primary is not None
                         else 0)


class PostHocEMA(_Bank):
    """Power-function EMAs (EDM2) of several sigma_rel, with snapshots for post-hoc EMA.

    sigma_rels: relative stds of the tracked profiles (EDM2: 0.05 and 0.10).
    snapshot_every: optimizer steps between snapshots written to <run>/phema/ once `bind()`
        was called; "auto": AUTO_SNAPSHOTS snapshots over the planned run (bind's total_steps);
        null: none. The tracked EMAs in every checkpoint are snapshots too. Disk: 4 bytes x
        parameters x len(sigma_rels) per snapshot (LIFT, 2 profiles: 468 MB).
    update_every: average every N optimizer steps (beta uses N, so the profile is unchanged).

    Reconstruction quality grows with the number of snapshots: reconstructing sigma_rel 0.10
    from 0.05 and 0.15 over a 600-step random walk, 12/30/60 snapshot times gave a relative
    profile error of 3.5e-2/1.6e-3/4e-4 (tests/test_posthoc.py checks the 30-snapshot case).
    """

    def __init__(self, model: nn.Module, sigma_rels: Sequence[float] = (0.05, 0.10),
                 snapshot_every: int | str | None = "auto", update_every: int = 1):
        if snapshot_every not in (None, "auto") and int(snapshot_every) < 1:
            raise ValueError(f"EMA snapshot_every must be >= 1, auto or null, got "
                             f"{snapshot_every}")
        live = _LiveTensors(model)
        tracks = [PowerEMA(live, s, update_every) for s in sigma_rels]
        super().__init__(live, tracks)
        self.snapshot_setting = snapshot_every
        self.snapshot_every = (int(snapshot_every) if snapshot_every not in (None, "auto")
                               else None)
        self.snapshot_dir: Path | None = None

    @property
    def decay(self) -> None:
        """None: a power-function EMA has no single decay (ema_state['decay'] holds the decay
        of its last update)."""
        return None

    def bind(self, run_dir: str | Path, total_steps: int | None = None) -> None:
        self.snapshot_dir = Path(run_dir) / SNAPSHOT_DIR
        if self.snapshot_setting == "auto" and total_steps:
            self.snapshot_every = max(1, int(total_steps) // AUTO_SNAPSHOTS)

    def update(self) -> None:
        super().update()
        if (self.snapshot_every and self.snapshot_dir is not None
                and self.step % self.snapshot_every == 0):
            self.save_snapshot()

    def save_snapshot(self) -> Path:
        """Write every track's state at this step to <run>/phema/snapshot_<step>.pt (atomic)."""
        if self.snapshot_dir is None:
            raise RuntimeError("PostHocEMA.save_snapshot() before bind(run_dir)")
        path = snapshot_path(self.snapshot_dir, self.step)
        snap = {"format": SNAPSHOT_FORMAT, "step": self.step,
                "emas": {t.name: t.state_dict() for t in self.tracks}}
        return atomic_write(path, lambda f: torch.save(snap, f))


def snapshot_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"snapshot_{step:09d}.pt"
