"""The decay of an exponential EMA: its range, window, warm-up rules and its half-life in
images (pure maths, shared by the EMA classes and the length maths)."""

from __future__ import annotations

import math

WARMUPS = ("cap", "power")


def check_decay(decay: float) -> float:
    decay = float(decay)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    return decay


def averaging_window(decay: float) -> float:
    """1 / (1 - decay): the EMA's averaging window in optimizer steps."""
    return math.inf if decay >= 1 else 1.0 / (1.0 - decay)


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


def decay_for_half_life(half_life_kimg: float, batch_size: int, update_every: int = 1) -> float:
    """EDM's rule: the decay per averaging update whose half-life is `half_life_kimg` thousand
    training images at `batch_size` images per optimizer step: 0.5^(B N / H)."""
    if float(half_life_kimg) <= 0:
        raise ValueError(f"ema.half_life_kimg={half_life_kimg} must be > 0")
    return 0.5 ** (int(batch_size) * int(update_every) / (1000.0 * float(half_life_kimg)))


def half_life_kimg_for_decay(decay: float, batch_size: int, update_every: int = 1) -> float:
    """The half-life, in thousands of training images, of a decay per averaging update."""
    if not 0.0 < float(decay) < 1.0:
        return 0.0 if float(decay) <= 0 else math.inf
    return int(batch_size) * int(update_every) * math.log(0.5) / math.log(float(decay)) / 1000.0
