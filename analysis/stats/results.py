"""One averaged weight set against raw, per series of a protocol: each at its best epoch (the
lowest seed-mean FID) and at the series' final epoch, and EMA - raw paired per (training seed,
sampling seed) at both, with its 95% interval (`series_results`): what the results table shows
and the verdict sentences say.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .intervals import Interval, paired_interval


def paired(raw: pd.Series | None, ema: pd.Series | None) -> Interval | None:
    """EMA - raw, paired per (training seed, sampling seed) both rows have, with its interval;
    the bootstrap pairs replicates only when both rows drew them with the same seed."""
    if raw is None or ema is None:
        return None
    common = sorted(set(raw["units"]) & set(ema["units"]))
    diffs = {u: ema["units"][u] - raw["units"][u] for u in common}
    boots = {}
    for u in common:
        a, b = raw["boots"].get(u), ema["boots"].get(u)
        if a is not None and b is not None and a[0] == b[0] and len(a[1]) == len(b[1]):
            boots[u] = b[1] - a[1]
    return paired_interval(diffs, boots)


def _best(by_epoch: pd.DataFrame) -> pd.Series | None:
    return None if by_epoch.empty else by_epoch.loc[by_epoch["mean"].idxmin()]


@dataclass
class SeriesResult:
    """What the report says about one series and one averaged weight set."""

    best_raw: pd.Series | None
    best_ema: pd.Series | None
    final: int
    last_raw: pd.Series | None
    last_ema: pd.Series | None
    best_gain: Interval | None
    final_gain: Interval | None


def series_results(summary: pd.DataFrame, variant: str | None) -> dict[str, SeriesResult]:
    """series -> `SeriesResult` of raw against ``variant``, for every series with raw or
    ``variant`` rows, in ``summary``'s order. A series' final epoch is its last evaluated one,
    raw or ``variant``; a weight set not evaluated at an epoch gives None there."""
    results = {}
    for series, part in summary.groupby("series", sort=False):
        raw = part[part["variant"] == "raw"].set_index("epoch")
        ema = part[part["variant"] == variant].set_index("epoch")
        if raw.empty and ema.empty:
            continue
        final = int(max(raw.index.union(ema.index)))
        best_raw, best_ema = _best(raw), _best(ema)
        last_raw = raw.loc[final] if final in raw.index else None
        last_ema = ema.loc[final] if final in ema.index else None
        results[series] = SeriesResult(best_raw, best_ema, final, last_raw, last_ema,
                                       paired(best_raw, best_ema), paired(last_raw, last_ema))
    return results
