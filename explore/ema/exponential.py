"""Exponential EMAs: one decay (`EMA`, conf/ema/on.yaml) or several in one pass (`EMABank`,
conf/ema/multi.yaml).

Counting is in optimizer steps (calls to `update()`), so gradient accumulation is handled by
calling `update()` once per optimizer step, not per micro-batch:

- `start_step`: for the first `start_step` optimizer steps the shadow just follows the raw
  weights (it is a copy); averaging starts after that, so the EMA "initial weights" are the
  weights at `start_step`.
- `update_every` N: average every N optimizer steps with decay**N, so the EMA length in optimizer
  steps is the same as with N = 1 (a plain decay with N > 1 would make it N times longer: a trap
  of several public EMA libraries).

Averaging update n, with decay d_n:

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
    power-function / post-hoc     1  (beta_1 = 0, see explore.ema.power)

and the averaging window (lag) in optimizer steps is 1/(1 - decay) for an exponential EMA and
sigma_rel * t for a power EMA at step t (the std of its profile, EDM2's definition of length).
The guard therefore never fires for power-function EMAs: their length is a fixed fraction of
the run so far, so they never lag into the initialisation the way a long exponential EMA of a
short run does (seed 004: decay 0.999 after 128 steps was 88% initial weights); their lag is
what to read.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from explore.ema.averaging import Bank, SingleTrack
from explore.ema.bema import bema_track
from explore.ema.decay import (
    WARMUPS,
    averaging_window,
    check_decay,
    decay_for_half_life,
    warmup_decay,
)
from explore.ema.names import ema_name
from explore.ema.tensors import LiveTensors, Track


def _decay(decay: float | None, half_life_kimg: float | None, batch_size: int | None
           ) -> float:
    """The decay per optimizer step: `decay`, or the one whose half-life is `half_life_kimg`
    thousand images at `batch_size` images per step (EDM: 0.5^(batch / half-life))."""
    if half_life_kimg is None:
        return decay
    if not batch_size:
        raise ValueError("ema.half_life_kimg needs the batch size (ema.batch_size, set from "
                         "trainer.batch_size by the config)")
    return decay_for_half_life(half_life_kimg, batch_size)


class EMA(Track, SingleTrack):
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
                 bias_correction: bool = False, half_life_kimg: float | None = None,
                 batch_size: int | None = None, *, live: LiveTensors | None = None):
        if int(start_step) < 0:
            raise ValueError(f"EMA start_step must be >= 0, got {start_step}")
        if warmup is not None and warmup not in WARMUPS:
            raise ValueError(f"EMA warmup={warmup!r}: use null, {' or '.join(WARMUPS)}")
        if float(inv_gamma) <= 0 or float(power) <= 0:
            raise ValueError(f"EMA warmup needs inv_gamma > 0 and power > 0, got {inv_gamma}, "
                             f"{power}")
        super().__init__(live if live is not None else LiveTensors(model), update_every)
        self.decay = check_decay(_decay(decay, half_life_kimg, batch_size))
        self.min_decay = check_decay(min_decay)
        self.start_step = int(start_step)
        self.warmup = warmup
        self.inv_gamma, self.power = float(inv_gamma), float(power)
        self.bias_correction = bool(bias_correction)

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


class EMABank(Bank):
    """Exponential EMAs of several decays in one pass, so a decay sweep is one training run.

    decays: list of decays; `primary` (a decay, default the first) is the run's `ema_state`.
    The other settings are those of `EMA` and apply to every decay.
    bema: BEMA's keywords ({} for its defaults; update_every defaults to the bank's) to track a
        bias-corrected EMA (explore.ema.bema, weight set `bema`) beside the decays; None: none.

    Cost per decay (python -m bench.ema_overhead; LIFT 58.5M parameters, this 2-core CPU,
    torch 2.15): 223 MiB of float32 shadow and 23 ms per optimizer step with 2 threads (38 ms
    with 1), about 1.6% of a batch-4 training step (1.4 s); each update streams 12 bytes per
    parameter, so the time scales with memory bandwidth.
    """

    def __init__(self, model: nn.Module, decays: Sequence[float] = (0.999, 0.9999),
                 primary: float | None = None, start_step: int = 0, update_every: int = 1,
                 warmup: str | None = None, inv_gamma: float = 1.0, power: float = 2.0 / 3.0,
                 min_decay: float = 0.0, bias_correction: bool = False,
                 half_lives_kimg: Sequence[float] | None = None, batch_size: int | None = None,
                 bema: dict | None = None):
        if half_lives_kimg:  # lengths in images instead of decays (primary: a half-life too)
            decays = [_decay(None, h, batch_size) for h in half_lives_kimg]
            primary = _decay(None, primary, batch_size) if primary is not None else None
        decays = [check_decay(d) for d in decays]
        if primary is not None and check_decay(primary) not in decays:
            raise ValueError(f"EMA primary={primary} is not one of decays={decays}")
        live = LiveTensors(model)
        tracks = [EMA(decay=d, start_step=start_step, update_every=update_every, warmup=warmup,
                      inv_gamma=inv_gamma, power=power, min_decay=min_decay,
                      bias_correction=bias_correction, live=live) for d in decays]
        if bema is not None:
            tracks.append(bema_track(live, bema, update_every))
        super().__init__(live, tracks, decays.index(float(primary)) if primary is not None
                         else 0)
