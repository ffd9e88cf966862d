"""The report's answer in sentences: does EMA beat raw (`significance`, `plateau`), which EMA
length is best (`best_length`), does BEMA remove the lag (`lag_verdicts`).

They open the report's sections, ahead of the tables they summarise, so they are written from
the same numbers the tables hold (`SeriesResult`, `LagRow`: the paired EMA - raw intervals) and
nothing else.
"""

from __future__ import annotations

import pandas as pd

from ..stats.intervals import Interval
from ..stats.lag import EARLY, significant_epochs
from ..stats.results import SeriesResult
from ..tables.cells import SIGNIFICANT_MARK, fid_cell, fmt_gain

NO_INTERVAL = "one seed and no bootstrap replicates"


def _bare(gain: Interval | None) -> bool:
    return gain is not None and not gain.has_interval


def gain_text(gain: Interval | None, why: bool = True) -> str:
    """"-5.17 [-5.83, -4.51] (t over 3 sampling seeds): significant, EMA better"; without an
    interval, the estimate and (``why``) the reason."""
    if gain is None:
        return "not measured for both"
    if not gain.has_interval:
        return fmt_gain(gain) + (f" (no interval: {NO_INTERVAL})" if why else "")
    verdict = ("significant, EMA better" if gain.significant and gain.estimate < 0 else
               "significant, EMA worse" if gain.significant else "not significant")
    return f"{fmt_gain(gain).rstrip(' ' + SIGNIFICANT_MARK)} ({gain.method}): {verdict}"


def significance(series: str, variant: str, r: SeriesResult) -> str:
    """One sentence: is the EMA's effect significant at the best and at the final epoch?"""
    best = (f"the best epochs (raw {r.best_raw.name}, EMA {r.best_ema.name})"
            if r.best_raw is not None and r.best_ema is not None else "the best epochs")
    once = _bare(r.best_gain) and _bare(r.final_gain)  # the same reason, said once
    return (f"**{series}**: FID of {variant} minus raw at {best}: "
            f"{gain_text(r.best_gain, not once)}; at the final epoch {r.final}: "
            f"{gain_text(r.final_gain, not once)}" + (f" (no intervals: {NO_INTERVAL})."
                                                      if once else "."))


def plateau(series: str, variant: str, r: SeriesResult) -> str | None:
    """Raw FID still falling at the last evaluated epoch: say what that means for the EMA."""
    if r.best_raw is None or int(r.best_raw.name) != r.final:
        return None
    lag = r.last_ema["lag_epochs"] if r.last_ema is not None else float("nan")
    lag = f"{lag:.1f} epochs" if pd.notna(lag) else "an unknown number of epochs"
    return (f"{series}: raw FID is lowest at the last evaluated epoch ({r.final}): training has "
            f"not plateaued, so an EMA that trails the raw weights is expected to be worse; "
            f"{variant} lags them by {lag} (lag_epochs).")


def best_length(series: str, best: str, result: SeriesResult, count: int,
                primary: str | None, primary_result: SeriesResult | None) -> str:
    """One sentence: which averaged weight set of ``count`` has the lowest FID at its best
    epoch, and how it compares with raw's best (and with ``primary``, the results table's
    weight set, when that is another one)."""
    head = f"**{series}**: of {count} averaged weight sets, {best} has the lowest FID"
    if best == primary:
        return head + " (the results table's: EMA length table below)."
    text = (f"{head}, {fid_cell(result.best_ema, with_epoch=True)}; minus raw's best: "
            f"{gain_text(result.best_gain)}")
    if primary is not None and primary_result is not None:
        text += f" ({primary}: {fid_cell(primary_result.best_ema, with_epoch=True)})"
    return text + "."


def _epochs_text(epochs: list[int]) -> str:
    """'epoch 3', 'epochs 1, 2' or 'no epoch'."""
    if not epochs:
        return "no epoch"
    return ("epoch " if len(epochs) == 1 else "epochs ") + ", ".join(map(str, epochs))


def lag_verdicts(table: pd.DataFrame | None, early=EARLY) -> list[str]:
    """Per series: does BEMA beat the EMA early and at the final epoch, and where does it
    lose against raw (95% paired intervals; lower FID is better)."""
    if table is None:
        return []
    out = []
    for series, rows in table.attrs["rows"].items():
        ema = table.attrs["ema"][series]
        final = rows[-1]
        first = [r for r in rows if r.epoch in early and r is not final]
        parts = []
        if ema is not None:
            better, worse, even = significant_epochs(first, "vs_ema")
            if first:
                parts.append(f"early ({_epochs_text([r.epoch for r in first])}) BEMA "
                             f"beats {ema} at {len(better)} of {len(first)} epochs"
                             + (f", loses at {_epochs_text(worse)}" if worse else ""))
            end = final.vs_ema
            verdict = ("beats" if end is not None and end.significant and end.hi < 0 else
                       "loses to" if end is not None and end.significant and end.lo > 0 else
                       "does not differ significantly from")
            parts.append(f"at the final epoch ({final.epoch}) it {verdict} {ema} "
                         f"(BEMA - EMA {fmt_gain(end)})")
        better, worse, _ = significant_epochs(rows, "vs_raw")
        parts.append("against raw it loses at " + _epochs_text(worse)
                     + (f" and wins at {_epochs_text(better)}" if better else "")
                     if worse else "it never loses significantly against raw"
                     + (f" (wins at {_epochs_text(better)})" if better else ""))
        out.append(f"**{series}, BEMA:** " + "; ".join(parts) + ".")
    return out
