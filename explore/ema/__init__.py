"""Moving averages of a model's weights, as maths and one small interface: no file is read or
written here, and nothing of explore is imported but explore.core (errors).

    ema = EMA(model, decay=0.9999)                          # conf/ema/on.yaml
    ema = EMABank(model, decays=[0.99, 0.999, 0.9999])      # conf/ema/multi.yaml
    ema = PostHocEMA(model, sigma_rels=[0.05, 0.10])        # conf/ema/posthoc.yaml
    ema = BEMA(model, ema_power=0.5, bias_power=0.2)        # bias-corrected EMA (Block & Zhang)
    EMABank(model, decays=[0.9999], bema={})                # any bank: + a BEMA track `bema`
    ema.plan(total_steps)                   # before training (PostHocEMA's snapshot_every=auto)
    optimizer.step(); ema.update()          # after every optimizer step
    if ema.snapshot_due(): save(ema.snapshot())  # PostHocEMA; the caller writes the file
    with ema.average_parameters():          # evaluate with EMA weights, raw ones put back after
        sample(model)
    ema.load_state_dict(ema.state_dict())   # exact resume (checkpoint_entries: every track)

Modules, lower first: names (weight-set names and what they mean; no torch), decay (an
exponential decay's window, warm-up and half-life; no torch), length (sigma_rel and half-life of
any average), tensors (shadows, copy by name), averaging (the training-loop interface,
checkpoint layout), bema (bias-corrected EMA), exponential (EMA, EMABank), power (EDM2
profiles, PostHocEMA), state (reading a saved average), reconstruction (post-hoc maths).

The names below load their module on first use, so `explore.ema.names` can be read without
torch (the analysis stage does).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Averaging": "averaging", "Bank": "averaging",
    "BEMA": "bema", "BEMA_NAME": "names",
    "WARMUPS": "decay", "averaging_window": "decay", "check_decay": "decay",
    "warmup_decay": "decay",
    "EMA": "exponential", "EMABank": "exponential",
    "ema_name": "names", "fmt_value": "names", "phema_name": "names",
    "AUTO_SNAPSHOTS": "power", "SIGMA_REL_MAX": "power", "SNAPSHOT_FORMAT": "power",
    "PostHocEMA": "power", "PowerEMA": "power", "gamma_to_sigma_rel": "power",
    "power_beta": "power", "sigma_rel_to_gamma": "power",
    "TrackInfo": "state", "power_states": "state", "track_info": "state",
    "EMAStateError": "tensors", "LiveTensors": "tensors", "Track": "tensors",
    "copy_by_name": "tensors", "strip_prefixes": "tensors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'explore.ema' has no attribute {name!r}")
    return getattr(importlib.import_module(f"explore.ema.{module}"), name)
