"""Which EMA length, as tables: per (series, epoch) the best length against raw and the fixed
decays (`length_table`), and every weight set of a series in one table, its best and final FID
with EMA - raw (`length_results`). The numbers are analysis.stats.lengths'.
"""

from __future__ import annotations

import math

import pandas as pd

from explore.ema.names import parse_weights

from ..stats.lengths import OWN_METHOD, best_lengths, best_variants, results_by_variant
from ..stats.results import SeriesResult
from ..stats.seeds import variant_rank
from .cells import GAIN_COLUMN, fid_cell, fmt_count, fmt_fid, fmt_gain

NO_LENGTH = "none (BEMA)"  # its σrel cell
BEST_MARK = "★"  # the lowest FID at its best epoch among a series' averaged weight sets
LENGTH_COLUMNS = ["Weights", "σrel", "Best FID", f"{GAIN_COLUMN} at best", "Final FID",
                  f"{GAIN_COLUMN} at final"]


def _fid_text(row: pd.Series | None) -> str:
    if row is None:
        return ""
    return fmt_fid(row["mean"], row["std"], row["n"], fmt_count(row))


def length_table(lengths: pd.DataFrame) -> pd.DataFrame:
    """One row per (series, epoch): best length (sigma_rel and weight set), its FID, the raw
    FID and the FID of every fixed-decay EMA (``ema@`` tracks), "mean ± std (n)" over seeds."""
    best = best_lengths(lengths)
    decays = sorted(lengths.loc[lengths["kind"] == "ema", "weights_id"].unique(),
                    key=lambda w: -parse_weights(w).decay)
    rows = []
    for _, b in best.iterrows():
        at = lengths[(lengths["series"] == b["series"]) & (lengths["epoch"] == b["epoch"])]
        pick = {w: r for w, r in zip(at["weights_id"], (r for _, r in at.iterrows()))}
        row = {"Model": b["series"], "epoch": int(b["epoch"]),
               "best σrel": f"{b['sigma_rel']:.3g}", "best weights": b["weights_id"],
               "FID at best": _fid_text(b), "raw FID": _fid_text(pick.get("raw"))}
        for w in decays:
            r = pick.get(w)
            sigma = f" (σrel {r['sigma_rel']:.3g})" if r is not None and pd.notna(
                r["sigma_rel"]) else ""
            row[f"EMA {w.split('@')[1]} FID"] = _fid_text(r) + sigma
        rows.append(row)
    return pd.DataFrame(rows).set_index("Model") if rows else pd.DataFrame()


def _final_sigma(lengths: pd.DataFrame, series: str, variant: str, epoch: int) -> float:
    rows = lengths[(lengths["series"] == series) & (lengths["variant"] == variant)]
    at = rows.loc[rows["epoch"] == epoch, "sigma_rel"].dropna()
    return float(at.iloc[0]) if len(at) else math.nan


def length_results(summary: pd.DataFrame, lengths: pd.DataFrame,
                   results: dict[str, dict[str, SeriesResult]] | None = None) -> pd.DataFrame:
    """"Which EMA length?" as one table, not one results table per length: per series, a
    row for raw and one per averaged weight set, ordered by σrel at the final epoch (a fixed
    decay's shrinks as training goes on; unknown last); columns the best FID (@ epoch),
    EMA - raw there (paired with raw at its own best epoch, as the results table),
    the final-epoch FID and EMA - raw there. The lowest best FID of a series' averaged weight
    sets is marked BEST_MARK, tracked post-hoc EMAs "(tracked)". ``results``:
    `results_by_variant` when already computed."""
    results = results_by_variant(summary) if results is None else results
    best = best_variants(results)
    tracked = {(s, v) for s, v, t in zip(lengths.get("series", []), lengths.get("variant", []),
                                         lengths.get("tracked", []), strict=True) if t}
    rows = []
    for series, part in summary.groupby("series", sort=False):
        raw = part[part["variant"] == "raw"].set_index("epoch")
        if not raw.empty:
            best_raw = raw.loc[raw["mean"].idxmin()]
            rows.append({"Model": series, "Weights": "raw", "σrel": "",
                         "Best FID": fid_cell(best_raw, with_epoch=True), "Final FID":
                         fid_cell(raw.loc[raw.index.max()])})
        averaged = []
        for variant, by_series in results.items():
            r = by_series.get(series)
            if r is None or (r.best_ema is None and r.last_ema is None):
                continue
            sigma = _final_sigma(lengths, series, variant, r.final)
            kind = part.loc[part["variant"] == variant].iloc[0]
            key = (math.isnan(sigma), sigma if not math.isnan(sigma) else 0.0,
                   variant_rank(kind["kind"], kind["decay"], variant))
            label = variant + (" (tracked)" if (series, variant) in tracked else "")
            label += f" {BEST_MARK}" if best.get(series) == variant else ""
            averaged.append((key, {
                "Model": series, "Weights": label,
                "σrel": (NO_LENGTH if kind["kind"] == OWN_METHOD else
                         "" if math.isnan(sigma) else f"{sigma:.3g}"),
                "Best FID": fid_cell(r.best_ema, with_epoch=True),
                f"{GAIN_COLUMN} at best": fmt_gain(r.best_gain),
                "Final FID": fid_cell(r.last_ema), f"{GAIN_COLUMN} at final":
                fmt_gain(r.final_gain)}))
        rows += [row for _, row in sorted(averaged, key=lambda a: a[0])]
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).set_index("Model").reindex(columns=LENGTH_COLUMNS).fillna("")
    table.attrs["results"], table.attrs["best"] = results, best
    return table
