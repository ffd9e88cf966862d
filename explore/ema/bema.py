"""BEMA, the bias-corrected EMA (Block & Zhang 2025, "EMA Without the Lag", arXiv 2508.00180):
an EMA whose lag behind the raw weights is removed by adding back a shrinking multiple of the
distance travelled since the start.

    ema = BEMA(model, ema_power=0.5, bias_power=0.2, lag=10, multiplier=1, burn_in=0)
    bank = EMABank(model, decays=[0.9999], bema={"ema_power": 0.5})   # beside other averages

With s the optimizer step (calls to `update()`, 0 at construction) and t = s - burn_in:

    t < 0                   the average is the raw weights (an exact copy)
    t = 0                   theta0 = mu = the raw weights, and so is the average
                            (at construction when burn_in = 0)
    t > 0, t % N == 0       base = lag + multiplier * t      (N = update_every)
                            beta = base ** -ema_power,  alpha = base ** -bias_power
                            mu <- (1 - beta) mu + beta theta
                            BEMA = mu + alpha (theta - theta0)
    otherwise               the average of the last update

so mu is an EMA whose decay 1 - beta_t grows towards 1, and alpha (theta - theta0) cancels the
part of its lag that a straight drift of the weights would cause. bias_power -> inf (alpha -> 0)
leaves mu alone; ema_power = 0 (beta = 1) makes mu the raw weights. The reference
implementation (trl's BEMACallback) computes base from the global step; here it is the step
since the burn-in ended, so that the schedule starts at `lag` whatever the burn-in.

Weight on the initial weights theta0: mu keeps prod_k (1 - beta_k) of them and the bias term
subtracts alpha, so `init_weight` = prod_k (1 - beta_k) - alpha_last, which is negative once alpha
exceeds mu's share (share_post_init = 1 - init_weight is then above 1). `window_steps` is mu's
averaging window N / beta of the last update, in optimizer steps.

Memory: three float32 copies of the floating weights (mu, theta0 and the BEMA value, which is
the `shadow` that `apply()` puts into the model), against one for an EMA: 3 x 234 MB for LIFT's
58.5M parameters. An update streams about 56 bytes per parameter (one lerp for mu, four foreach
passes for the output) against an EMA's 12: python -m bench.ema_overhead (LIFT, 1 thread, this
loaded 2-core CPU) timed 97 ms against 20 ms, 3% of a batch-4 training step (3.2 s). Three
passes (mu + alpha theta - alpha theta0) would be a quarter faster but round an intermediate
larger than the result.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from explore.ema.averaging import SingleTrack
from explore.ema.names import BEMA_NAME
from explore.ema.tensors import EMAStateError, LiveTensors, Track, copy_by_name


class _Op(NamedTuple):
    """What one update() does to a BEMA track (what `_advance` hands to `_absorb`)."""

    kind: str            # "follow" (burn-in), "start" (theta0 = mu = theta), "update"
    beta: float = 1.0
    alpha: float = 0.0


_FOLLOW, _START = _Op("follow"), _Op("start")


def _settings(ema_power, bias_power, lag, multiplier, burn_in, update_every) -> dict:
    """The settings as numbers, or a ValueError naming the bad one."""
    s = {"ema_power": float(ema_power), "bias_power": float(bias_power), "lag": float(lag),
         "multiplier": float(multiplier), "burn_in": int(burn_in)}
    for key in ("ema_power", "bias_power"):
        if not s[key] >= 0:  # also refuses nan
            raise ValueError(f"BEMA {key} must be >= 0, got {s[key]}")
    for key in ("lag", "multiplier"):
        if not s[key] > 0:
            raise ValueError(f"BEMA {key} must be > 0 (base = lag + multiplier * t must stay "
                             f"positive), got {s[key]}")
    if s["burn_in"] < 0:
        raise ValueError(f"BEMA burn_in must be >= 0, got {burn_in}")
    first = s["lag"] + s["multiplier"] * int(update_every)  # the smallest base ever used
    if s["ema_power"] > 0 and first < 1:
        # beta = base**-ema_power would exceed 1: mu would overshoot the raw weights
        raise ValueError(f"BEMA lag + multiplier * update_every must be >= 1 so that beta <= 1, "
                         f"got lag={s['lag']}, multiplier={s['multiplier']}, "
                         f"update_every={update_every}")
    return s


class BEMA(Track, SingleTrack):
    """Bias-corrected EMA (module docstring). Standalone it is the run's average (its only
    track, like `EMA`); with `live=` it is one track of a bank (`EMABank(bema=...)`,
    `PostHocEMA(bema=...)`).

    ema_power (kappa), bias_power (eta), lag (rho), multiplier (gamma): the schedules
    beta = (lag + multiplier t)^-ema_power, alpha = (lag + multiplier t)^-bias_power.
    burn_in: optimizer steps during which the average is the raw weights; theta0 is taken
        when it ends. update_every: update every N optimizer steps (t counts optimizer steps).
    """

    kind = "bema"

    def __init__(self, model: nn.Module | None = None, ema_power: float = 0.5,
                 bias_power: float = 0.2, lag: float = 10.0, multiplier: float = 1.0,
                 burn_in: int = 0, update_every: int = 1, *, live: LiveTensors | None = None):
        super().__init__(live if live is not None else LiveTensors(model), update_every)
        self._configure(_settings(ema_power, bias_power, lag, multiplier, burn_in,
                                  self.update_every))
        self.last_beta: float | None = None
        self.last_alpha = 0.0  # no bias term before the first update
        with torch.no_grad():  # the shadow is the weights at construction: theta0 and mu too
            self._mu = [t.clone() for t in self._shadow]
            self._theta0 = [t.clone() for t in self._shadow]
        self._mu_grouped = [[self._mu[i] for i in idx] for idx, _ in self.live.groups]
        self._theta0_grouped = [[self._theta0[i] for i in idx] for idx, _ in self.live.groups]

    def _configure(self, settings: dict) -> None:
        self.ema_power, self.bias_power = settings["ema_power"], settings["bias_power"]
        self.lag, self.multiplier = settings["lag"], settings["multiplier"]
        self.burn_in = settings["burn_in"]

    @property
    def name(self) -> str:
        return BEMA_NAME

    @property
    def start_step(self) -> int:
        """Optimizer steps before averaging starts (the burn-in), as for every track."""
        return self.burn_in

    @property
    def decay(self) -> float | None:
        """mu's decay 1 - beta at the last update (None before it); it grows towards 1."""
        return self.last_decay

    @property
    def mu(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.live.float_names, self._mu))

    @property
    def theta0(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.live.float_names, self._theta0))

    @property
    def settings(self) -> dict:
        """What defines it (run.json's `bema`): its schedule, burn-in and update interval."""
        return {"ema_power": self.ema_power, "bias_power": self.bias_power, "lag": self.lag,
                "multiplier": self.multiplier, "burn_in": self.burn_in,
                "update_every": self.update_every}

    def schedule(self, t: int) -> tuple[float, float]:
        """(beta, alpha) of the update at step t after the burn-in."""
        base = self.lag + self.multiplier * t
        return base ** -self.ema_power, base ** -self.bias_power

    # -- the update --------------------------------------------------------------------------------
    def _advance(self) -> _Op | None:
        self.step += 1
        t = self.step - self.burn_in
        if t < 0:
            return _FOLLOW
        if t == 0:
            return _START
        if t % self.update_every:
            return None
        beta, alpha = self.schedule(t)
        self.last_beta, self.last_alpha, self.last_decay = beta, alpha, 1.0 - beta
        self.decay_product *= 1.0 - beta
        self.num_updates += 1
        return _Op("update", beta, alpha)

    @torch.no_grad()
    def _absorb(self, sources: list[list[torch.Tensor]], others: list[torch.Tensor],
                op: _Op) -> None:
        """Foreach kernels per (device, dtype) group; `sources` (float32) are never written:
        for a float32 model they are the live weights themselves."""
        for out, mu, theta0, src in zip(self._grouped, self._mu_grouped, self._theta0_grouped,
                                        sources):
            if op.kind == "follow":
                torch._foreach_copy_(out, src)
                continue
            if op.kind == "start":
                for dst in (out, mu, theta0):
                    torch._foreach_copy_(dst, src)
                continue
            if op.beta == 1.0:  # ema_power = 0: mu is the raw weights, exactly
                torch._foreach_copy_(mu, src)
            else:
                torch._foreach_lerp_(mu, src, op.beta)
            # out = mu + alpha (theta - theta0), in place, the difference taken first: it is
            # small, so it is exact-ish and alpha scales it without cancellation
            torch._foreach_copy_(out, src)
            torch._foreach_sub_(out, theta0)
            torch._foreach_mul_(out, op.alpha)
            torch._foreach_add_(out, mu)
        if self._other:
            torch._foreach_copy_(self._other, others)

    # -- what the average means --------------------------------------------------------------------
    @property
    def init_weight(self) -> float:
        """The weight on the initialisation. Without a burn-in theta0 is the initialisation:
        prod_k (1 - beta_k) - alpha_last, mu's weight on theta0 minus the bias term's (1 until
        the first update; may be negative). With a burn-in, 0: the average is the raw weights
        until it ends, and theta0 and mu start from weights trained for burn_in steps."""
        if self.burn_in > 0:
            return 0.0
        return self.decay_product - self.last_alpha

    @property
    def window_steps(self) -> float:
        """mu's averaging window update_every / beta of the last update, in optimizer steps
        (0 before the first update)."""
        return self.update_every / self.last_beta if self.last_beta else 0.0

    def planned_share(self, total_steps: int) -> float:
        """share_post_init after `total_steps` optimizer steps: 1 - (prod (1 - beta) - alpha);
        1 with a burn-in (see `init_weight`)."""
        if self.burn_in > 0:
            return 1.0
        n = max(0, int(total_steps)) // self.update_every  # no burn-in here: it starts at 0
        if n == 0:
            return 0.0
        base = self.lag + self.multiplier * self.update_every * np.arange(1, n + 1, dtype=float)
        with np.errstate(divide="ignore"):  # beta = 1 (ema_power 0): log 0 = -inf, prod 0
            keep = math.exp(float(np.sum(np.log1p(-base ** -self.ema_power))))
        return 1.0 - (keep - float(base[-1]) ** -self.bias_power)

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Track counters, shadow (the BEMA value), the settings, and mu and theta0."""
        return {**self._common_state(), "decay": self.last_decay, "last_decay": self.last_decay,
                "ema_power": self.ema_power, "bias_power": self.bias_power, "lag": self.lag,
                "multiplier": self.multiplier, "burn_in": self.burn_in,
                "last_beta": self.last_beta, "last_alpha": self.last_alpha,
                "mu": self.mu, "theta0": self.theta0}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Resume exactly from `state_dict()`: its settings replace this track's, as a saved
        EMA's decay does."""
        settings = None
        if isinstance(state, dict) and state.get("kind") == self.kind:  # else: refused below
            lacking = [k for k in ("mu", "theta0") if k not in state]
            if lacking:
                raise EMAStateError(f"BEMA state lacks {lacking}: it cannot be resumed")
            settings = _settings(*(state.get(k, getattr(self, k)) for k in (
                "ema_power", "bias_power", "lag", "multiplier", "burn_in", "update_every")))
        self._load_tensors(state)  # kind, shadow, buffers, step, num_updates, update_every
        for key, mine in (("mu", self.mu), ("theta0", self.theta0)):
            copy_by_name(mine, state[key], f"BEMA state {key}", EMAStateError,
                         required=self.live.float_names)
        self._configure(settings)
        self.decay_product = float(state["decay_product"])
        self.last_beta = state.get("last_beta")
        self.last_alpha = float(state.get("last_alpha", 0.0))


def bema_track(live: LiveTensors, settings: dict, update_every: int) -> BEMA:
    """A bank's BEMA track: `settings` are BEMA's keywords ({} for the defaults); update_every
    is the bank's unless they say otherwise."""
    return BEMA(live=live, **{"update_every": update_every, **dict(settings)})
