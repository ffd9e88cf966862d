"""One cell of a report table, from a `summarize` row or a paired difference.

Cells: "mean ± std (n=k)" over seeds (the mean alone for one seed; "n=3×5": 3 training x 5
sampling seeds), "@ 200ep" where the epoch was chosen (best = the epoch whose seed-mean is
lowest), and a dagger where an EMA was still mostly its initial weights when evaluated.

"EMA - raw" is the paired difference (EMA minus raw, per training and sampling seed, on the
unrounded values; negative = EMA better for FID) with its 95% interval (analysis.stats) and a
star where the interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from ..stats.intervals import Interval

LOW_MARK = "†"  # EMA still mostly initial weights (ema_share_low) in at least one seed
SIGNIFICANT_MARK = "*"  # the 95% interval of EMA - raw excludes 0
NOT_AVAILABLE = "n/a"
GAIN_COLUMN = "EMA - raw"


def fmt_count(row: pd.Series) -> str:
    """"n=3", or "n=3×5" for 3 training seeds x 5 sampling seeds."""
    train, sample = len(row["seeds"]), len(row["sample_seeds"])
    return f"n={train}×{sample}" if train > 1 and sample > 1 else f"n={row['n']}"


def fmt_fid(mean: float, std: float, n: int, count: str = "", decimals: int = 2) -> str:
    """"33.07 ± 0.10 (n=3)" over several seeds, "33.07" for one."""
    if n > 1 and not math.isnan(std):
        return f"{mean:.{decimals}f} ± {std:.{decimals}f}" + (f" ({count})" if count else "")
    return f"{mean:.{decimals}f}"


def spread_decimals(std: float) -> int:
    """2 decimals, more (up to 4) for a std below 0.05, so that it does not read 0.00."""
    if pd.isna(std) or std <= 0 or std >= 0.05:
        return 2
    return max(2, min(4, 1 - math.floor(math.log10(std))))


def fid_cell(row: pd.Series | None, with_epoch: bool = False) -> str:
    """A summary row's FID as a table cell: "27.90 ± 0.10 (n=3) @ 400ep †"; "n/a" for None."""
    if row is None:
        return NOT_AVAILABLE
    text = fmt_fid(row["mean"], row["std"], row["n"], fmt_count(row),
                   decimals=spread_decimals(row["std"]) if row["n"] > 1 else 2)
    text += f" @ {row.name}ep" if with_epoch else ""
    return text + (f" {LOW_MARK}" if row["share_low"] else "")


def gain_decimals(gain: Interval) -> int:
    """2 decimals, more (up to 4) when the interval is narrower than 0.1, so that its two ends
    differ on the page (smoke-size FIDs are below 1)."""
    width = gain.hi - gain.lo if gain.has_interval else 0.0
    if width <= 1e-9 * max(1.0, abs(gain.estimate)):  # no width but float rounding
        return 2
    return max(2, min(4, 1 - math.floor(math.log10(width))))


def fmt_gain(gain: Interval | None) -> str:
    """"-5.17 [-5.40, -4.94] *" (star: the interval excludes 0); "+1.20" without interval."""
    if gain is None:
        return NOT_AVAILABLE
    d = gain_decimals(gain)
    text = f"{gain.estimate:+.{d}f}"
    if gain.has_interval:
        text += f" [{gain.lo:+.{d}f}, {gain.hi:+.{d}f}]"
        text += f" {SIGNIFICANT_MARK}" if gain.significant else ""
    return text


def seeds_text(values: Iterable) -> str:
    """"0, 1, 2" from seeds, or from tuples of seeds (a summary's ``seeds`` column)."""
    flat = {int(s) for v in values for s in (v if isinstance(v, tuple) else (v,))}
    return ", ".join(map(str, sorted(flat)))
