"""Weight-set names of the averages, and what they mean: ``raw`` (the optimizer's weights),
``ema`` (the run's primary exponential EMA), ``ema@<decay>`` (another tracked decay),
``phema@<sigma_rel>`` (a power-function EMA, tracked or reconstructed post hoc) and ``bema``
(the bias-corrected EMA, BEMA: one per run; it has no single length). `ema_name` /
`phema_name` write them; `parse_weights` reads them. The same names are checkpoint keys
(`emas`), metrics.csv column suffixes, fid.csv's `weights` and the reconstructed files' names.

No torch import: analysis/ reads names without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# an EMA whose post-init share (1 - weight left on the initial weights) is below this is
# "still mostly its initial weights": flagged in the log, fid.csv and the report (seed 004)
EMA_SHARE_LOW = 0.5
BEMA_NAME = "bema"  # the bias-corrected EMA's weight-set name (explore.ema.bema)


def fmt_value(x: float) -> str:
    """Shortest faithful text of a decay or sigma_rel (0.9999, not 0.9999000001 nor 1)."""
    return f"{float(x):.10g}"


def ema_name(decay: float) -> str:
    """Weight-set name of an exponential EMA: ema@0.999."""
    return f"ema@{fmt_value(decay)}"


def phema_name(sigma_rel: float) -> str:
    """Weight-set name of a power-function (post-hoc) EMA: phema@0.1."""
    return f"phema@{fmt_value(sigma_rel)}"


@dataclass(frozen=True)
class WeightsName:
    """A parsed weight-set name."""

    kind: str          # raw | ema | phema | bema | other
    decay: float       # the exponential decay (NaN for raw, phema, other)
    sigma_rel: float   # the power profile's sigma_rel (NaN unless phema)
    id: str            # canonical name: `ema` of a 0.999 run and `ema@0.999` are both ema@0.999
    label: str         # for tables: "raw", "EMA 0.9999", "post-hoc EMA σrel 0.1", "BEMA"


def parse_weights(weights: str, primary_decay: float | None = None) -> WeightsName:
    """Read a weight-set name; ``ema`` is the run's primary decay (`primary_decay`), so ``ema``
    of a 0.999 run and ``ema@0.999`` of a 0.9999 run are the same average."""
    name, _, arg = str(weights).partition("@")
    nan = math.nan
    try:
        value = float(arg) if arg else nan
    except ValueError:
        return WeightsName("other", nan, nan, str(weights), str(weights))
    if name == "raw" and not arg:
        return WeightsName("raw", nan, nan, "raw", "raw")
    if name == BEMA_NAME and not arg:
        return WeightsName("bema", nan, nan, BEMA_NAME, "BEMA")
    if name == "ema":
        decay = value if arg else primary_decay
        if decay is None or (isinstance(decay, float) and math.isnan(decay)):
            return WeightsName("ema", nan, nan, "ema", "EMA")  # a run that names no decay
        return WeightsName("ema", float(decay), nan, ema_name(decay), f"EMA {fmt_value(decay)}")
    if name == "phema" and arg:
        return WeightsName("phema", nan, value, phema_name(value),
                           f"post-hoc EMA σrel {fmt_value(value)}")
    return WeightsName("other", nan, nan, str(weights), str(weights))
