"""Is the late FID rise overfitting? The held-out loss and the memorisation rate, per weight set,
as frames (analysis.figures.overfitting draws them).

- Held-out loss (explore.training.heldout): metrics.csv ``loss_train_fixed``, ``loss_holdout`` and
  ``loss_gap`` (held-out - training) for the raw weights, ``ema_<those>[@<decay>]`` and
  ``phema_<those>@<sigma_rel>`` for the averages. Only runs with held-out images have them.
- Memorisation (explore.evaluation.memorization): fid.csv ``memorization``, the share of
  generated images that are near-copies of a training image, per weight set and epoch
  (eval.metrics=[..., memorization]).
"""

from __future__ import annotations

import re

import pandas as pd

from explore.ema.names import fmt_value

HELDOUT = re.compile(r"^(?:(ema|phema)_)?loss_(train_fixed|holdout|gap)(?:@(.+))?$")


def heldout_frame(metrics: pd.DataFrame) -> pd.DataFrame:
    """Held-out loss columns as a long frame: model, seed, epoch, weights (raw, EMA <decay>,
    post-hoc EMA σrel <s>), quantity (train_fixed, holdout, gap), value; empty without them.
    Runs that differ only in their primary decay repeat the same network: counted once."""
    parts = []
    for column in metrics.columns:
        m = HELDOUT.match(column)
        if m is None:
            continue
        kind, quantity, arg = m.groups()
        if kind is None:
            weights = pd.Series("raw", index=metrics.index)
        elif kind == "ema":
            decay = (pd.Series(float(arg), index=metrics.index) if arg
                     else metrics["ema_decay"])
            weights = decay.map(lambda d: f"EMA {fmt_value(d)}")
        else:
            weights = pd.Series(f"post-hoc EMA σrel {arg}", index=metrics.index)
        parts.append(metrics[["model", "seed", "dataset", "image_size", "epoch"]].assign(
            weights=weights, quantity=quantity,
            value=pd.to_numeric(metrics[column], errors="coerce")))
    if not parts:
        return pd.DataFrame(columns=["model", "seed", "epoch", "weights", "quantity", "value"])
    long = pd.concat(parts, ignore_index=True).dropna(subset=["value"])
    keys = ["model", "seed", "dataset", "image_size", "epoch", "weights", "quantity"]
    return long.drop_duplicates(subset=keys).reset_index(drop=True)


def memorization_summary(fid: pd.DataFrame) -> pd.DataFrame:
    """Mean memorisation rate per (protocol, series, weight set, epoch) over seeds; empty
    when no row measured it."""
    if "memorization" not in fid:
        return pd.DataFrame()
    rows = fid.assign(memorization=pd.to_numeric(fid["memorization"], errors="coerce"))
    rows = rows.dropna(subset=["memorization"])
    if rows.empty:
        return pd.DataFrame()
    keys = ["protocol", "series", "kind", "decay", "variant", "epoch"]
    return rows.groupby(keys, dropna=False, sort=False)["memorization"].agg(
        ["mean", "std", "count"]).reset_index()
