"""Does BEMA remove the EMA's lag? For a series that tracks a BEMA (weight set `bema`, Block &
Zhang 2025) beside an exponential EMA: BEMA - EMA and BEMA - raw, paired per sampling seed,
at the early epochs (where an EMA still carries its initial weights) and at the final epoch
(`lag_rows`), and the epochs where BEMA is significantly better or worse (`significant_epochs`).
The EMA compared with is the longest decay the series tracks (`reference_ema`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .intervals import Interval
from .results import paired

EARLY = (1, 2, 3)         # the epochs where an EMA's lag shows (its initial weights)


@dataclass
class LagRow:
    """One epoch of a series: BEMA against its reference EMA and against raw."""

    epoch: int
    vs_ema: Interval | None   # BEMA - EMA, paired
    vs_raw: Interval | None   # BEMA - raw, paired


def variant_by_epoch(part: pd.DataFrame, variant: str) -> pd.DataFrame:
    """One weight set's summary rows of a series, indexed by epoch."""
    return part[part["variant"] == variant].set_index("epoch")


def row_at(frame: pd.DataFrame, epoch: int) -> pd.Series | None:
    """The row of `variant_by_epoch`'s frame at an epoch, None where it was not evaluated."""
    return frame.loc[epoch] if epoch in frame.index else None


def reference_ema(part: pd.DataFrame) -> str | None:
    """The exponential EMA BEMA is compared with: the longest decay the run tracks (the one
    that lags most), or None."""
    emas = part[part["kind"] == "ema"].drop_duplicates("variant")
    if emas.empty:
        return None
    return str(emas.loc[emas["decay"].idxmax(), "variant"])


def lag_rows(part: pd.DataFrame, early=EARLY) -> list[LagRow]:
    """One series' comparisons: at each early epoch BEMA has (before its final one) and at its
    final epoch, BEMA - the reference EMA (None without one) and BEMA - raw, paired; [] when
    the series has no BEMA."""
    bema = variant_by_epoch(part, "BEMA")
    if bema.empty:
        return []
    ref = reference_ema(part)
    raw = variant_by_epoch(part, "raw")
    ema = variant_by_epoch(part, ref) if ref else None
    final = int(bema.index.max())
    epochs = [e for e in early if e in bema.index and e < final] + [final]
    return [LagRow(e, paired(row_at(ema, e), row_at(bema, e)) if ref else None,
                   paired(row_at(raw, e), row_at(bema, e))) for e in epochs]


def significant_epochs(rows: list[LagRow], attr: str) -> tuple[list[int], list[int], list[int]]:
    """Epochs where BEMA is significantly better, worse, and not significantly different."""
    better, worse, even = [], [], []
    for r in rows:
        gain = getattr(r, attr)
        if gain is None:
            continue
        (better if gain.significant and gain.hi < 0 else
         worse if gain.significant and gain.lo > 0 else even).append(r.epoch)
    return better, worse, even
