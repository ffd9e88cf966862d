"""Which EMA length? Every averaged weight set on one axis: its ``sigma_rel`` (EDM2's relative std
of the averaging profile; fid.csv's ``sigma_rel`` column, which evaluation writes for
exponential EMAs too, where it shrinks as training goes on: sqrt(d) / ((1 - d) T)). Raw weights
have no length, nor has BEMA (its bias term is not an average of past weights).

- `length_summary`: ``summarize``'s rows of one protocol with ``sigma_rel``, and `mark_tracked`
  (which post-hoc lengths were tracked during training rather than reconstructed);
- `best_lengths`: per (series, epoch) the lowest seed-mean FID among averaged weight sets;
- `results_by_variant`, `best_variants`: EMA - raw of every averaged weight set, and per series
  the one whose best-epoch FID is lowest.
"""

from __future__ import annotations

import math

import pandas as pd

from explore.ema.names import fmt_value, parse_weights

from .results import SeriesResult, series_results
from .seeds import variants

AVERAGED = ("ema", "phema")
OWN_METHOD = "bema"  # an average with no single length (BEMA): drawn as its own marker


def _sigma_of(weights_id: str) -> float:
    """A phema weight set's sigma_rel from its name (rows from before the column)."""
    parsed = parse_weights(weights_id)
    return parsed.sigma_rel if parsed.kind == "phema" else math.nan


def length_summary(summary: pd.DataFrame, fid: pd.DataFrame) -> pd.DataFrame:
    """``summary`` rows with ``sigma_rel`` (mean over the eval rows of that series, weight set
    and epoch; from the name for phema rows without the column) and ``tracked`` (a phema
    weight set tracked during training, not reconstructed: run.json's ema_sigma_rels)."""
    if summary.empty:
        return summary.assign(sigma_rel=pd.Series(dtype=float), tracked=False)
    keys = ["protocol", "series", "weights_id", "epoch"]
    rows = fid.assign(sigma_rel=pd.to_numeric(fid.get("sigma_rel"), errors="coerce"))
    sigma = rows.groupby(keys, dropna=False)["sigma_rel"].mean().rename("sigma_rel")
    out = summary.merge(sigma.reset_index(), on=keys, how="left")
    by_name = out["weights_id"].map(_sigma_of)
    out["sigma_rel"] = out["sigma_rel"].where(out["sigma_rel"].notna(), by_name)
    out.loc[out["kind"] == "raw", "sigma_rel"] = math.nan
    out["tracked"] = False
    return out


def mark_tracked(lengths: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Set ``tracked`` where a phema weight set was tracked during training by a run of that
    model (run.json ``ema_sigma_rels``)."""
    if "ema_sigma_rels" not in runs:
        return lengths
    tracked = {(m, f"phema@{fmt_value(s)}") for m, sigmas in zip(runs["model"],
                                                                   runs["ema_sigma_rels"])
               if isinstance(sigmas, list) for s in sigmas}
    keys = zip(lengths["model"], lengths["weights_id"])
    return lengths.assign(tracked=[k in tracked for k in keys])


def has_several_lengths(summary: pd.DataFrame) -> bool:
    """More than one averaged weight set (phema lengths or several ema decays)."""
    averaged = summary[summary["kind"].isin(AVERAGED)]
    return averaged["weights_id"].nunique() > 1


def best_lengths(lengths: pd.DataFrame) -> pd.DataFrame:
    """Per (series, epoch): the averaged weight set with the lowest seed-mean FID (only those
    with a known sigma_rel), as the rows of ``lengths``."""
    averaged = lengths[lengths["kind"].isin(AVERAGED) & lengths["sigma_rel"].notna()]
    averaged = averaged.dropna(subset=["mean"])
    if averaged.empty:
        return averaged
    best = averaged.loc[averaged.groupby(["series", "epoch"], sort=False)["mean"].idxmin()]
    return best.sort_values(["series", "epoch"], kind="stable").reset_index(drop=True)


def results_by_variant(summary: pd.DataFrame) -> dict[str, dict[str, SeriesResult]]:
    """variant -> series -> `SeriesResult` (EMA - raw at the best and final epochs), for every
    averaged weight set of one protocol, in table order."""
    return {v: series_results(summary, v) for v in variants(summary)}


def best_variants(results: dict[str, dict[str, SeriesResult]]) -> dict[str, str]:
    """series -> the averaged weight set whose best-epoch seed-mean FID is lowest."""
    best: dict[str, tuple[float, str]] = {}
    for variant, by_series in results.items():
        for series, r in by_series.items():
            if r.best_ema is not None and (series not in best
                                           or r.best_ema["mean"] < best[series][0]):
                best[series] = (float(r.best_ema["mean"]), variant)
    return {series: variant for series, (_, variant) in best.items()}
