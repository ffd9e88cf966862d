"""Power-function EMAs (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", EDM2): `PowerEMA` tracks one profile, `PostHocEMA` (conf/ema/posthoc.yaml)
several in one pass, with snapshots from which `explore.ema.reconstruction` rebuilds the EMA of
any other length after training.

After t optimizer steps the average has the profile p(tau) = (gamma + 1) tau**gamma / t**(gamma + 1)
on [0, t] (EDM2 eq. 121-127), reached by the update beta_t = (1 - N / t) ** (gamma + 1) every N
optimizer steps (`update_every`; beta uses N, so the profile is unchanged). beta = 0 at the first
update, so nothing of the initialisation is left: the share of post-init weight is always 1. The
weight of the raw weights after step k is exactly the integral of p over (k - N, k]. Its
relative std (EDM2's definition of the EMA's length) is

    sigma_rel = sqrt((gamma + 1) / ((gamma + 2)**2 (gamma + 3)))

and gamma for a given sigma_rel is the largest real root of x^3 + 7x^2 + (16 - s)x + (12 - s),
s = sigma_rel**-2 (EDM2 eq. 126). sigma_rel is at most SIGMA_REL_MAX ~ 0.30 (gamma =
(sqrt 5 - 3)/2, a near-uniform average of the whole run). EDM2 tracks 0.05 and 0.10; its
FID-optimal lengths run from 0.135 (XS model) to 0.070 (XXL). The averaging window (lag) of a
power EMA at step t is sigma_rel * t optimizer steps: a fixed fraction of the run so far.

Snapshots: every `snapshot_every` optimizer steps `PostHocEMA.snapshot_due()` is true right after
the update, and the training loop writes `PostHocEMA.snapshot()` ({format, step, emas: {name:
state}}) to `<run>/phema/snapshot_<step>.pt` (`RunFolder.snapshot`); `explore.posthoc` combines them
(and the tracked EMAs stored in checkpoints) into the EMA of any other sigma_rel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from explore.ema.averaging import Bank
from explore.ema.bema import bema_track
from explore.ema.exponential import EMA
from explore.ema.names import phema_name
from explore.ema.tensors import EMAStateError, LiveTensors, Track

SNAPSHOT_FORMAT = "explore-phema-snapshot/1"
AUTO_SNAPSHOTS = 32  # snapshot_every=auto: this many snapshots over the planned run
# the largest relative std a power profile can have: at gamma* = (sqrt(5) - 3) / 2, the root of
# d/dgamma log sigma_rel**2 = 0, i.e. gamma**2 + 3 gamma + 1 = 0
_GAMMA_AT_MAX = (math.sqrt(5.0) - 3.0) / 2.0


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


class PowerEMA(Track):
    """One power-function EMA (EDM2): beta_t = (1 - N / t) ** (gamma + 1) every N steps."""

    kind = "phema"

    def __init__(self, live: LiveTensors, sigma_rel: float, update_every: int = 1):
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


class PostHocEMA(Bank):
    """Power-function EMAs (EDM2) of several sigma_rel, with snapshots for post-hoc EMA.

    sigma_rels: relative stds of the tracked profiles (EDM2: 0.05 and 0.10).
    snapshot_every: optimizer steps between snapshots (`snapshot_due()`; the training loop
        writes them to <run>/phema/); "auto": AUTO_SNAPSHOTS snapshots over the planned run
        (`plan(total_steps)`, none before it is called); null: none. The tracked EMAs in every
        checkpoint are snapshots too. Disk: 4 bytes x parameters x len(sigma_rels) per snapshot
        (LIFT, 2 profiles: 468 MB).
    update_every: average every N optimizer steps (beta uses N, so the profile is unchanged).
    decays: exponential EMAs tracked beside them (e.g. the study's fixed 0.9999), the first
        being the run's primary average (`ema`), so a run has the fixed-decay EMA and the
        material for any other length; they are not snapshotted (nothing is rebuilt from them).
    bema: BEMA's keywords ({} for its defaults; update_every defaults to the bank's) to track a
        bias-corrected EMA (explore.ema.bema, weight set `bema`) after the other tracks; it is
        not snapshotted either. None: none.

    Reconstruction quality grows with the number of snapshots: reconstructing sigma_rel 0.10
    from 0.05 and 0.15 over a 600-step random walk, 12/30/60 snapshot times gave a relative
    profile error of 3.5e-2/1.6e-3/4e-4 (tests/test_posthoc.py checks the 30-snapshot case).
    """

    def __init__(self, model: nn.Module, sigma_rels: Sequence[float] = (0.05, 0.10),
                 snapshot_every: int | str | None = "auto", update_every: int = 1,
                 decays: Sequence[float] | None = None, bema: dict | None = None):
        if snapshot_every not in (None, "auto") and int(snapshot_every) < 1:
            raise ValueError(f"EMA snapshot_every must be >= 1, auto or null, got "
                             f"{snapshot_every}")
        live = LiveTensors(model)
        tracks = [EMA(decay=d, update_every=update_every, live=live) for d in decays or []]
        tracks += [PowerEMA(live, s, update_every) for s in sigma_rels]
        if bema is not None:
            tracks.append(bema_track(live, bema, update_every))
        super().__init__(live, tracks)
        self.snapshot_setting = snapshot_every
        self.snapshot_every = (int(snapshot_every) if snapshot_every not in (None, "auto")
                               else None)
        self._due = False  # the last update() was at a snapshot step

    @property
    def decay(self) -> float | None:
        """The primary exponential EMA's decay; None without one (a power-function EMA has no
        single decay: ema_state['decay'] holds the decay of its last update)."""
        return self.primary.decay if self.primary.kind == "ema" else None

    def plan(self, total_steps: int | None) -> None:
        """snapshot_every=auto: total_steps // AUTO_SNAPSHOTS (at least 1)."""
        if self.snapshot_setting == "auto" and total_steps:
            self.snapshot_every = max(1, int(total_steps) // AUTO_SNAPSHOTS)

    def update(self) -> None:
        super().update()
        self._due = bool(self.snapshot_every) and self.step % self.snapshot_every == 0

    def snapshot_due(self) -> bool:
        """True right after the update at a step that is a multiple of snapshot_every."""
        return self._due

    def snapshot(self) -> dict:
        """{format, step, emas: {name: state}} of the power-function tracks: what the training
        loop saves at RunFolder(run).snapshot(step)."""
        return {"format": SNAPSHOT_FORMAT, "step": self.step,
                "emas": {t.name: t.state_dict() for t in self.tracks if t.kind == "phema"}}

    def load_checkpoint_entries(self, saved: dict, source: str = "the checkpoint") -> None:
        super().load_checkpoint_entries(saved, source)
        self._due = False  # not an update
