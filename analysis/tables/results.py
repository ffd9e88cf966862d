"""The tables of one FID protocol, from `summarize`'s rows: the results table (raw against one
averaged weight set, at the best and final epochs, with EMA - raw) and the metrics by epoch (FID
of every weight set, then KID, precision and recall where measured).
"""

from __future__ import annotations

import pandas as pd

from ..stats.results import series_results
from ..stats.seeds import variants
from .cells import GAIN_COLUMN, fid_cell, fmt_fid, fmt_gain

RESULT_COLUMNS = ["Without EMA", "With EMA", GAIN_COLUMN]
# per-epoch table: (summary column prefix, column suffix, scale, decimals)
OTHER_METRICS = [("kid", "KID×10³", 1e3, 2), ("precision", "precision", 1.0, 3),
                 ("recall", "recall", 1.0, 3)]


def results_table(summary: pd.DataFrame, variant: str | None) -> pd.DataFrame:
    """The results table of one protocol for one averaged weight set.

    Rows "<series> best" and "<series> @ final epoch" for every series present; columns
    "Without EMA" (raw), "With EMA" (``variant``) and "EMA - raw" (paired, with its 95%
    interval; at "best", each weight set at its own best epoch, paired by seed). The final
    epoch of a series is its last evaluated one, raw or ``variant``; a cell with nothing at
    that epoch reads "n/a". ``attrs["final_epochs"]`` maps series to that epoch,
    ``attrs["results"]`` series to their `SeriesResult` (`series_results`).
    """
    results = series_results(summary, variant)
    rows = {}
    for series, result in results.items():
        rows[f"{series} best"] = [
            fid_cell(result.best_raw, with_epoch=True), fid_cell(result.best_ema, with_epoch=True),
            fmt_gain(result.best_gain),
        ]
        rows[f"{series} @ final epoch"] = [
            fid_cell(result.last_raw), fid_cell(result.last_ema), fmt_gain(result.final_gain),
        ]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=RESULT_COLUMNS)
    table.index.name = "Model"
    table.attrs["final_epochs"] = {series: r.final for series, r in results.items()}
    table.attrs["results"] = results
    return table


def _metric_cell(row: pd.Series, metric: str, scale: float, decimals: int) -> str:
    mean = row[f"{metric}_mean"]
    if pd.isna(mean):
        return ""
    return fmt_fid(mean * scale, row[f"{metric}_std"] * scale, row[f"{metric}_n"],
                   decimals=decimals)


def epoch_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Metrics by epoch: one row per epoch; one FID column per series and weight set (raw
    columns first, then each averaged weight set), then, where
    measured, "<series> <weights> KID×10³", "... precision" and "... recall" columns. Cells
    "mean ± std (n=k)" over seeds. Empty = not evaluated."""
    columns = {}
    order = ["raw"] + variants(summary)
    for variant in order:
        for series, part in summary[summary["variant"] == variant].groupby("series", sort=False):
            columns[f"{series} {variant}"] = {row["epoch"]: fid_cell(row)
                                              for _, row in part.iterrows()}
    for metric, label, scale, decimals in OTHER_METRICS:
        if f"{metric}_mean" not in summary or summary[f"{metric}_mean"].isna().all():
            continue
        for variant in order:
            rows = summary[summary["variant"] == variant]
            for series, part in rows.groupby("series", sort=False):
                cells = {row["epoch"]: _metric_cell(row, metric, scale, decimals)
                         for _, row in part.iterrows()}
                if any(cells.values()):
                    columns[f"{series} {variant} {label}"] = cells
    table = pd.DataFrame(columns).sort_index().fillna("")
    table.index.name = "epoch"
    return table
