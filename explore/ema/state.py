"""Reading one EMA state: what `Track.state_dict()` wrote, the original study's {decay, shadow},
or a post-hoc reconstruction by explore.posthoc, as one `TrackInfo`. The only reader of these
keys outside the tracks' own `load_state_dict`.

    every track    kind ("ema" | "phema" | "bema"), name, shadow {entry: float32 tensor},
                   buffers, step, num_updates, update_every, decay_product, init_weight,
                   window_steps, decay, last_decay
    "ema"          + start_step, warmup, inv_gamma, power, min_decay, bias_correction
    "phema"        + sigma_rel, gamma (decay: the decay of its last update)
    "bema"         + ema_power, bias_power, lag, multiplier, burn_in, last_beta, last_alpha,
                   mu, theta0 (shadow: the BEMA value; decay: mu's last 1 - beta)
    original study decay, shadow (parameters only; no counters)
    reconstructed  kind "phema", name, sigma_rel, gamma, step, init_weight, window_steps, shadow
                   (no counters: its optimizer steps are its step)

A checkpoint holds them as `ema_state` (the primary) and `emas` {name: state} (every track); a
snapshot as `emas`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from explore.ema.decay import averaging_window
from explore.ema.length import exponential_length, power_length
from explore.ema.power import sigma_rel_to_gamma


@dataclass
class TrackInfo:
    kind: str                          # "ema" (exponential), "phema" (power function), "bema"
    name: str | None                   # ema@0.999, phema@0.1 (None: the original study's)
    shadow: dict[str, torch.Tensor]    # entry name (maybe with wrapper prefixes) -> tensor
    step: int | None                   # optimizer steps the track has seen (None: not stored)
    updates: int | None                # optimizer steps averaged (None: unknown)
    estimated: bool                    # `updates` was estimated from epoch x steps/epoch
    decay: float | None                # exponential decay (None for a power profile)
    init_weight: float | None          # weight on the initial weights (None: not stored)
    window_steps: float                # averaging window in optimizer steps: 1/(1 - decay), or
                                       # sigma_rel x t for a power profile (stored, or implied),
                                       # mu's N/beta for a BEMA
    sigma_rel: float | None = None     # power profiles
    gamma: float | None = None
    rule: dict | None = None           # an exponential EMA's update rule (update_every,
                                       # start_step, warmup, ..., bias_correction), or a BEMA's
                                       # settings (ema_power, ..., burn_in), if stored

    def length(self, step: int):
        """Its length (explore.ema.length.Length: sigma_rel, half-life) at optimizer `step`;
        None for a BEMA, whose profile has a negative weight (the bias term's on theta0)."""
        if self.kind == "bema":
            return None
        if self.kind == "phema":
            gamma = self.gamma if self.gamma is not None else sigma_rel_to_gamma(self.sigma_rel)
            return power_length(self.sigma_rel, gamma, step)
        rule = dict(self.rule or {})
        if self.estimated or "num_updates" not in rule:  # counters unknown: from the step
            rule.pop("num_updates", None)
            return exponential_length(self.decay, step, **rule)
        updates = rule.pop("num_updates")
        return exponential_length(self.decay, step, updates=updates, **rule)


def _updates(state: dict, checkpoint_state: dict, steps_per_epoch: int | None
             ) -> tuple[int | None, bool]:
    """Optimizer steps averaged: num_updates x update_every; a reconstruction's step; or, for
    a state without counters, epoch x steps_per_epoch (estimated)."""
    if "num_updates" in state:
        return int(state["num_updates"]) * int(state.get("update_every", 1)), False
    if state.get("kind") == "phema" and "step" in state:
        return int(state["step"]), False
    epoch = checkpoint_state.get("epoch", checkpoint_state.get("epochs"))
    if epoch is not None and steps_per_epoch:
        return int(epoch) * int(steps_per_epoch), True
    return None, False


def track_info(state: dict, checkpoint_state: dict | None = None,
               steps_per_epoch: int | None = None) -> TrackInfo:
    """What one EMA state (`ema_state`, an entry of `emas`, or a reconstruction) is.

    `checkpoint_state`: the checkpoint holding it, for states without counters (the original
    study's: their updates are estimated as epoch x `steps_per_epoch`, their decay may be only
    the checkpoint's `ema_decay`).
    """
    checkpoint_state = checkpoint_state or {}
    updates, estimated = _updates(state, checkpoint_state, steps_per_epoch)
    init_weight = state.get("init_weight")
    step = int(state["step"]) if "step" in state else None
    if state.get("kind") == "phema":
        sigma_rel = float(state["sigma_rel"])
        gamma = float(state["gamma"]) if "gamma" in state else None
        window = float(state.get("window_steps", sigma_rel * (updates or 0)))
        return TrackInfo("phema", state.get("name"), state["shadow"], step, updates, False,
                         None, 0.0 if init_weight is None else float(init_weight), window,
                         sigma_rel, gamma)
    if state.get("kind") == "bema":
        rule = {k: state[k] for k in _BEMA_RULE if state.get(k) is not None}
        # with a burn-in nothing of the initialisation is left (BEMA.init_weight); states saved
        # before that rule stored the formula's value instead
        if rule.get("burn_in", 0) > 0:
            init_weight = 0.0
        return TrackInfo("bema", state.get("name"), state["shadow"], step, updates, False, None,
                         None if init_weight is None else float(init_weight),
                         float(state.get("window_steps", 0.0)), rule=rule)
    decay = float(state.get("decay", checkpoint_state.get("ema_decay")))
    rule = {k: state[k] for k in _RULE if state.get(k) is not None}
    return TrackInfo("ema", state.get("name"), state["shadow"], step, updates, estimated, decay,
                     None if init_weight is None else float(init_weight), averaging_window(decay),
                     rule=rule)


# an exponential state's settings that shape its averaging profile (explore.ema.length)
_RULE = ("num_updates", "update_every", "start_step", "warmup", "inv_gamma", "power",
         "min_decay", "bias_correction")
_BEMA_RULE = ("num_updates", "update_every", "ema_power", "bias_power", "lag", "multiplier",
              "burn_in")


def power_states(checkpoint_state: dict | None) -> dict[str, TrackInfo]:
    """The power-function EMAs of a checkpoint or snapshot (its `emas`), by name."""
    emas = (checkpoint_state or {}).get("emas") or {}
    return {name: track_info(s, checkpoint_state) for name, s in emas.items()
            if s.get("kind") == "phema"}
