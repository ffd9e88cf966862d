"""How training went: the training loss against epoch (`training_figure`, one panel per model)
and the EMA diagnostics (`ema_figure`: the EMA's distance from the raw weights and its share of
trained weights).
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from ..load import model_name
from .style import (
    MARKERS,
    ONE_COLUMN,
    STYLES,
    TWO_COLUMN,
    band,
    epoch_axis,
    log_axis,
    model_colour,
    paper_style,
)

LOSS_NOTES = {
    "baseline": "loss = MSE of ε",
    "lift": "loss = loss_64 + loss_32 (two scales summed)",
}
DELTA_LABELS = {
    "ema_rel_rms_delta": "relative RMS distance EMA−raw",
    "ema_rms_delta": "RMS distance EMA−raw",
    "ema_mean_abs_delta": "mean |EMA−raw|",
}


def _seed_count(frame: pd.DataFrame) -> int:
    """Most training seeds behind one curve."""
    return int(frame.groupby("model")["seed"].nunique().max()) if len(frame) else 0


@paper_style
def training_figure(metrics: pd.DataFrame) -> Figure | None:
    """Training loss vs epoch, one panel per model: the models' losses are different sums
    (LIFT adds its two scales), so one axis would invite a comparison that means nothing.
    LIFT also shows loss_64 dashed and loss_32 dotted; mean and ±std over seeds (said only
    with several seeds). None when no run logged a loss."""
    if metrics.empty or "loss" not in metrics:
        return None
    # Runs differing only in EMA decay trained the same network: count each seed once.
    train = metrics.drop_duplicates(["model", "seed", "dataset", "image_size", "epoch"])
    several = train[["dataset", "image_size"]].drop_duplicates().shape[0] > 1
    models = list(train["model"].drop_duplicates())
    fig = Figure(figsize=(ONE_COLUMN if len(models) == 1 else TWO_COLUMN, 2.6),
                 layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False).ravel()
    for ax, model in zip(axes, models, strict=True):
        rows = train[train["model"] == model]
        for (dataset, size), part in rows.groupby(["dataset", "image_size"]):
            for column, style in [("loss", "-"), ("loss_64", "--"), ("loss_32", ":")]:
                if column not in part or part[column].isna().all():
                    continue
                stats = part.groupby("epoch")[column].agg(["mean", "std"])
                label = column + (f" ({dataset} {size}px)" if several else "")
                band(ax, stats.index, stats["mean"], stats["std"], model_colour(model),
                     style, label)
        if (rows["loss"].dropna() > 0).all():
            log_axis(ax)
        epoch_axis(ax)
        ax.set_title(f"{model_name(model)}: {LOSS_NOTES.get(model, 'loss')}")
        ax.legend(frameon=False)
    axes[0].set_ylabel("training loss (MSE)")
    seeds = _seed_count(train)
    title = "Training loss" + (f" (mean ± std over {seeds} seeds)" if seeds > 1 else "")
    if len(models) > 1:
        title += ": panels not comparable (different losses)"
    fig.suptitle(title)
    return fig


@paper_style
def ema_figure(ema: pd.DataFrame) -> Figure | None:
    """EMA diagnostics vs epoch (``load.ema_diagnostics`` frame), one row of panels per model
    (the models' share curves coincide and would hide each other): how far the EMA is from
    the raw weights, and its post-init share 1 - decay^steps with the 0.5 line below which
    the EMA is still mostly its initial weights. None without diagnostics."""
    if ema.empty:
        return None
    quantities = set(ema["quantity"])
    delta = next((q for q in DELTA_LABELS if q in quantities), None)
    models = list(ema["model"].drop_duplicates())
    fig = Figure(figsize=(TWO_COLUMN, 1.2 + 1.9 * len(models)), layout="constrained")
    axes = fig.subplots(len(models), 2, squeeze=False, sharex=True)
    decays = sorted(ema["decay"].unique(), reverse=True)
    several = ema[["dataset", "image_size"]].drop_duplicates().shape[0] > 1
    for (ax_delta, ax_share), model in zip(axes, models, strict=True):
        for (decay, dataset, size), part in ema[ema["model"] == model].groupby(
            ["decay", "dataset", "image_size"]
        ):
            label = f"EMA {decay:.10g}" + (f" ({dataset} {size}px)" if several else "")
            i = decays.index(decay)
            for ax, quantity in [(ax_delta, delta), (ax_share, "ema_share")]:
                stats = part[part["quantity"] == quantity].groupby("epoch")["value"]
                stats = stats.agg(["mean", "std"])
                if stats.empty:
                    continue
                band(ax, stats.index, stats["mean"], stats["std"], model_colour(model),
                     STYLES[i % len(STYLES)], label)
                ax.scatter(stats.index, stats["mean"], s=9, marker=MARKERS[i % len(MARKERS)],
                           color=model_colour(model), zorder=3)
        if delta is not None:
            log_axis(ax_delta)
            ax_delta.set_ylabel(DELTA_LABELS[delta])
        ax_delta.set_title(f"{model_name(model)}: distance of EMA from raw weights")
        ax_share.axhline(0.5, color="grey", ls=":", lw=1, label="0.5: half initial weights")
        ax_share.set_ylim(0, 1.02)
        ax_share.set_ylabel("post-init share\n1 - decay^steps")
        ax_share.set_title(f"{model_name(model)}: EMA share of trained weights")
        ax_share.legend(frameon=False, loc="lower right")
    for ax in axes[-1]:
        epoch_axis(ax)
    return fig
