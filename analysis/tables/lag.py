"""BEMA and the EMA's lag as one table: per series with a BEMA, its early epochs and its final one;
raw, the reference EMA, up to two power-function EMAs and BEMA, then BEMA - EMA and BEMA - raw
(analysis.stats.lag's paired comparisons).
"""

from __future__ import annotations

import pandas as pd

from ..stats.lag import EARLY, lag_rows, reference_ema, row_at, variant_by_epoch
from .cells import fid_cell, fmt_gain

MAX_POWER_COLUMNS = 2     # power-function EMAs shown beside (a length sweep has its own table)


def lag_table(summary: pd.DataFrame, early=EARLY) -> pd.DataFrame | None:
    """One table of every series that has a BEMA: rows "<series> @ <epoch>ep" for the early
    epochs it has and its final epoch; columns raw, the reference EMA, up to two power EMAs,
    BEMA (mean ± std over seeds), "BEMA - EMA" and "BEMA - raw" (paired, 95% interval, * when
    it excludes 0). ``attrs["rows"]``: series -> [LagRow], ``attrs["ema"]``: series -> the
    EMA's label. None when no series has a BEMA."""
    rows, lags, refs, columns = {}, {}, {}, None
    for series, part in summary.groupby("series", sort=False):
        compared = lag_rows(part, early)
        if not compared:
            continue
        ref = reference_ema(part)
        powers = list(part.loc[part["kind"] == "phema", "variant"].drop_duplicates())
        shown = ["raw", *([ref] if ref else []), *powers[:MAX_POWER_COLUMNS], "BEMA"]
        columns = columns or [*["EMA" if v == ref else v for v in shown], "BEMA - EMA",
                              "BEMA - raw"]
        frames = {v: variant_by_epoch(part, v) for v in shown}
        final = compared[-1].epoch
        lags[series], refs[series] = compared, ref
        for lag in compared:
            label = f"{series} @ {lag.epoch}ep" + (" (final)" if lag.epoch == final else "")
            rows[label] = [*(fid_cell(row_at(frames[v], lag.epoch)) for v in shown),
                           fmt_gain(lag.vs_ema), fmt_gain(lag.vs_raw)]
    if not rows:
        return None
    width = max(len(r) for r in rows.values())
    table = pd.DataFrame.from_dict({k: v + [""] * (width - len(v)) for k, v in rows.items()},
                                   orient="index", columns=columns[:width])
    table.index.name = "Model @ epoch"
    table.attrs["rows"], table.attrs["ema"] = lags, refs
    return table
