"""Moving averages of a model's weights: one exponential EMA, a bank of several decays, and
power-function EMAs whose snapshots allow post-hoc EMA (EDM2).

    ema = EMA(model, decay=0.9999)                          # conf/ema/on.yaml
    ema = EMABank(model, decays=[0.99, 0.999, 0.9999])      # conf/ema/multi.yaml
    ema = PostHocEMA(model, sigma_rels=[0.05, 0.10])        # conf/ema/posthoc.yaml
    ema = BEMA(model, ema_power=0.5, bias_power=0.2)        # bias-corrected EMA (Block & Zhang)
    EMABank(model, decays=[0.9999], bema={})                # any bank: + a BEMA track `bema`
    ema.plan(total_steps)                   # before training (PostHocEMA's snapshot_every=auto)
    optimizer.step(); ema.update()          # after every optimizer step
    if ema.snapshot_due(): save(ema.snapshot())  # PostHocEMA; the loop writes the file
    with ema.average_parameters():          # evaluate with EMA weights, raw ones put back after
        sample(model)
    ema.apply(); ...; ema.restore()         # the same, by hand
    ema.load_state_dict(ema.state_dict())   # exact resume (checkpoint_entries: every track)

Modules: tensors (shadows, copy by name), averaging (the training-loop interface, snapshots,
checkpoint layout), exponential (update rule, warm-up, bias correction, share), power (EDM2
profiles, PostHocEMA), bema (bias-corrected EMA), reconstruction (post-hoc maths), state (reading
a saved state), names.
"""

from .averaging import Averaging, Bank
from .bema import BEMA, BEMA_NAME
from .exponential import EMA, WARMUPS, EMABank, averaging_window, check_decay, warmup_decay
from .names import ema_name, fmt_value, phema_name
from .power import (
    AUTO_SNAPSHOTS,
    SIGMA_REL_MAX,
    SNAPSHOT_FORMAT,
    PostHocEMA,
    PowerEMA,
    gamma_to_sigma_rel,
    power_beta,
    sigma_rel_to_gamma,
)
from .state import TrackInfo, power_states, track_info
from .tensors import EMAStateError, LiveTensors, Track, copy_by_name, strip_prefixes

__all__ = [
    "EMA", "EMABank", "PostHocEMA", "PowerEMA", "BEMA", "BEMA_NAME", "Averaging", "Bank",
    "Track", "LiveTensors",
    "EMAStateError", "copy_by_name", "strip_prefixes", "check_decay", "averaging_window",
    "warmup_decay", "WARMUPS", "gamma_to_sigma_rel", "sigma_rel_to_gamma", "SIGMA_REL_MAX",
    "power_beta", "SNAPSHOT_FORMAT", "AUTO_SNAPSHOTS",
    "TrackInfo", "track_info", "power_states", "fmt_value", "ema_name", "phema_name",
]
