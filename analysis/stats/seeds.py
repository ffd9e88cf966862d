"""Seed statistics of a study's FID rows: per (protocol, series, weight set, epoch) the mean, std
and count over seeds of FID, KID, precision and recall, with the per-seed values and bootstrap
replicates that paired differences need (`summarize`); the order of weight sets
(`variant_rank`) and the averaged ones present (`variants`).

The seeds: with several training seeds the std is over training seeds, each the mean of its
sampling seeds ("n=3×5": 3 training x 5 sampling seeds); with one training seed it is over
sampling seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from explore.run.results import parse_replicates

from ..load import series_rank

SUMMARY_KEYS = ["protocol", "model", "series", "kind", "decay", "weights_id", "variant", "epoch"]
# metrics summarised like FID, besides it
METRICS = ("kid", "precision", "recall")


def variant_rank(kind: str, decay: float, variant: str) -> tuple:
    """Sort key of weight sets: raw, then EMA by decreasing decay, post-hoc EMA, BEMA, others."""
    order = {"raw": 0, "ema": 1, "phema": 2, "bema": 3}.get(kind, 4)
    return (order, -decay if kind == "ema" and not math.isnan(decay) else 0.0, variant)


def seed_stats(values: dict[tuple[int, int], float]) -> tuple[float, float, str]:
    """(mean, std, over) of per-(training seed, sampling seed) values: over training seeds
    (each the mean of its sampling seeds) when there are several, else over sampling seeds;
    std NaN for one value."""
    values = {k: v for k, v in values.items() if not pd.isna(v)}
    if not values:
        return math.nan, math.nan, ""
    train: dict[int, list[float]] = {}
    for (seed, _), v in values.items():
        train.setdefault(seed, []).append(v)
    if len(train) >= 2:
        means = np.array([np.mean(v) for v in train.values()])
        return float(means.mean()), float(means.std(ddof=1)), "training seeds"
    x = np.array(list(values.values()))
    if len(x) >= 2:
        return float(x.mean()), float(x.std(ddof=1)), "sampling seeds"
    return float(x[0]), math.nan, ""


def _units(part: pd.DataFrame, column: str) -> dict[tuple[int, int], float]:
    return {(int(s), int(q)): float(v)
            for s, q, v in zip(part["seed"], part["sample_seed"], part[column], strict=True)}


def _boots(part: pd.DataFrame) -> dict[tuple[int, int], tuple]:
    """(training seed, sampling seed) -> (bootstrap seed, replicates) where a row has them."""
    out = {}
    for s, q, b, text in zip(part["seed"], part["sample_seed"], part["boot_seed"],
                             part["fid_boot"], strict=True):
        reps = parse_replicates(text)
        if reps:
            out[(int(s), int(q))] = (b, np.array(reps))
    return out


def _summary_row(part: pd.DataFrame) -> dict:
    units = _units(part, "fid")
    mean, std, over = seed_stats(units)
    row = {"mean": mean, "std": std, "n": len(units), "std_over": over,
           "seeds": tuple(sorted({int(v) for v in part["seed"]})),
           "sample_seeds": tuple(sorted({int(v) for v in part["sample_seed"]})),
           "share_low": bool(part["ema_share_low"].any()),
           "share_min": part["ema_share"].min(), "lag_epochs": part["lag_epochs"].mean(),
           "num_real": part["num_real"].iloc[0], "units": units, "boots": _boots(part)}
    for metric in METRICS:
        values = {k: v for k, v in _units(part, metric).items() if not math.isnan(v)}
        m, sd, _ = seed_stats(values)
        row.update({f"{metric}_mean": m, f"{metric}_std": sd, f"{metric}_n": len(values)})
    return row


def summarize(fid: pd.DataFrame) -> pd.DataFrame:
    """Seed statistics per (protocol, series, weight set, epoch) of a ``dedupe_networks``
    frame: FID mean, std and n (`seed_stats`; `std_over` says over which seeds), seeds
    (training) and sample_seeds, share_low (any seed's EMA was mostly initial weights),
    share_min, lag_epochs, the same for kid / precision / recall (``<metric>_mean``,
    ``_std``, ``_n``), and the per-seed values (``units``) and bootstrap replicates
    (``boots``) the paired differences need. Sorted by series, weight set and epoch."""
    if fid.empty:
        return pd.DataFrame(columns=SUMMARY_KEYS + ["mean", "std", "n", "seeds", "share_low"])
    rows = [{**dict(zip(SUMMARY_KEYS, key, strict=True)), **_summary_row(part)}
            for key, part in fid.groupby(SUMMARY_KEYS, dropna=False, sort=False)]
    summary = pd.DataFrame(rows)
    summary["epoch"] = summary["epoch"].astype(int)
    rank = summary.apply(
        lambda r: (series_rank(r["series"]), variant_rank(r["kind"], r["decay"], r["variant"])),
        axis=1,
    )
    order = sorted(summary.index, key=lambda i: (rank[i], summary.at[i, "epoch"]))
    return summary.loc[order].reset_index(drop=True)


def variants(summary: pd.DataFrame) -> list[str]:
    """The averaged weight sets (EMA decays, post-hoc EMAs) present, in table order."""
    return [v for v in summary["variant"].drop_duplicates() if v != "raw"]
