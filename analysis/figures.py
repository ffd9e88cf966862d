"""Figures of a study at paper size: one column 3.5 in or two columns 7 in wide, fonts 8 pt.

Figures are built with matplotlib's object API (``Figure``, no pyplot): nothing global is
switched, nothing is left open, and saving picks the Agg / PDF canvas from the file type.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path

import matplotlib as mpl
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from .load import SERIES_ORDER, model_name
from .tables import variants

ONE_COLUMN, TWO_COLUMN = 3.5, 7.0  # inches
PAPER_RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "legend.fontsize": 8, "figure.titlesize": 9,
    "lines.linewidth": 1.2, "axes.grid": True, "grid.alpha": 0.3,
    "pdf.fonttype": 42,  # TrueType in PDFs: text stays text when pasted into a paper
    "savefig.dpi": 300,
}
STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P"]
FID_SCALES = ("auto", "log", "linear")
LOG_RATIO = 5.0  # fid_scale=auto: log axis when the largest plotted FID is > 5x the smallest


def _paper(build: Callable) -> Callable:
    """Run a figure builder under PAPER_RC (font sizes are read when artists are made)."""

    @wraps(build)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(PAPER_RC):
            return build(*args, **kwargs)

    return wrapper


def series_colour(series: str) -> str:
    """One colour per series, stable across figures (Baseline C0, LIFT DP-Total C1, ...)."""
    if series in SERIES_ORDER:
        return f"C{SERIES_ORDER.index(series)}"
    return f"C{len(SERIES_ORDER) + sum(map(ord, series)) % (10 - len(SERIES_ORDER))}"


def model_colour(model: str) -> str:
    """A model's colour in training figures: that of its main series."""
    return series_colour({"baseline": "Baseline", "lift": "LIFT DP-Total"}.get(model, model))


def _band(ax, x, mean, std, colour: str, style: str, label: str | None = None) -> None:
    """Mean line with a ±std band (no band where std is undefined: one seed)."""
    ax.plot(x, mean, style, color=colour, label=label)
    std = std.fillna(0.0)
    ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)


def _fid_curve(ax, rows: pd.DataFrame, colour: str, style: str, star_dx: float = 0.0) -> None:
    """Seed-mean FID by epoch; hollow markers where the EMA was mostly initial weights; a
    star on the best (lowest seed-mean) epoch, shifted by ``star_dx`` epochs so that the
    stars of curves that are best at one epoch do not cover each other (raw filled, EMA
    hollow with a thick edge)."""
    if rows.empty:
        return
    x, y, low = rows["epoch"], rows["mean"], rows["share_low"].astype(bool)
    _band(ax, x, y, rows["std"], colour, style)
    ax.scatter(x[~low], y[~low], s=10, color=colour, zorder=3)
    ax.scatter(x[low], y[low], s=16, facecolors="white", edgecolors=colour, linewidths=1,
               zorder=4)
    best = rows.loc[y.idxmin()]
    raw = style == "-"
    ax.scatter([best["epoch"] + star_dx], [best["mean"]], marker="*", s=90,
               facecolors=colour if raw else "white", edgecolors="black" if raw else colour,
               linewidths=0.6 if raw else 1.4, zorder=5)


def star_shifts(best_epochs: Sequence[float], epochs: Sequence[float]) -> list[float]:
    """x shifts (in epochs) of best-epoch stars: curves whose best epoch is shared are spread
    over 0.4 of the epoch spacing, so no star covers another; a star alone stays put."""
    ordered = sorted(set(epochs))
    gap = min((b - a for a, b in zip(ordered, ordered[1:])), default=1.0)
    shifts = [0.0] * len(best_epochs)
    for epoch in set(best_epochs):
        sharing = [i for i, e in enumerate(best_epochs) if e == epoch]
        width = 0.4 * gap / len(sharing)
        for k, i in enumerate(sharing):
            shifts[i] = (k - (len(sharing) - 1) / 2) * width
    return shifts


def panel_grid(count: int, row_height: float, extra: float) -> tuple[Figure, list, int]:
    """A figure of `count` panels in rows of at most two, sharing the y axis (one column wide
    for a single panel); the axes beyond `count` are hidden. Returns (figure, axes, columns)."""
    ncols = min(count, 2)
    nrows = math.ceil(count / ncols)
    fig = Figure(figsize=(ONE_COLUMN if ncols == 1 else TWO_COLUMN, row_height * nrows + extra),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, list(axes), ncols


def epoch_axis(ax) -> None:
    """An x axis of epochs: labelled, whole-number ticks only."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def log_axis(ax, which: str = "y") -> None:
    """A log scale on `ax`'s x or y axis whose ticks read as plain numbers (0.2, 0.5, 1, 2)
    instead of 2x10^-1: labels at 1, 2 and 5 of each decade."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def fid_log_scale(summary: pd.DataFrame, scale: str = "auto") -> bool:
    """Log y axis? ``log`` / ``linear`` force it; ``auto``: when the plotted FIDs span more
    than LOG_RATIO x (early epochs dwarf the late differences on a linear axis)."""
    if scale not in FID_SCALES:
        raise ValueError(f"fid_scale={scale!r}: choose from {list(FID_SCALES)}")
    values = summary["mean"].dropna() if "mean" in summary else pd.Series(dtype=float)
    if scale != "auto":
        return scale == "log" and bool((values > 0).all())
    values = values[values > 0]
    return len(values) > 1 and values.max() / values.min() > LOG_RATIO


def _fid_legend(series: Sequence[str], summary: pd.DataFrame) -> list:
    handles = [Line2D([], [], color=series_colour(s), label=s) for s in series]
    handles += [Line2D([], [], color="black", ls="-", label="raw weights"),
                Line2D([], [], color="black", ls="--", label="EMA weights"),
                Line2D([], [], color="grey", marker="*", ms=9, ls="", mec="black",
                       label="best epoch, raw"),
                Line2D([], [], color="grey", marker="*", ms=9, ls="", mfc="white",
                       mec="grey", mew=1.4, label="best epoch, EMA")]
    if (summary["n"] > 1).any():
        handles.append(Patch(color="grey", alpha=0.3, label=f"± std over {_seed_words(summary)}"))
    if summary["share_low"].any():
        handles.append(Line2D([], [], color="grey", marker="o", mfc="white", ls="",
                              label="EMA mostly initial weights"))
    return handles


def _seed_words(summary: pd.DataFrame) -> str:
    """"3 sampling seeds", "3 training seeds (x 5 sampling)", "2-3 sampling seeds"."""
    several = summary[summary["n"] > 1]
    over = "training" if (several["std_over"] == "training seeds").any() else "sampling"
    counts = several["seeds"].map(len) if over == "training" else several["n"]
    lo, hi = int(counts.min()), int(counts.max())
    text = f"{lo} {over} seeds" if lo == hi else f"{lo}-{hi} {over} seeds"
    if over == "training" and (several["sample_seeds"].map(len) > 1).any():
        text += f" (x {int(several['sample_seeds'].map(len).max())} sampling)"
    return text


@_paper
def fid_figure(summary: pd.DataFrame, title: str, scale: str = "auto") -> Figure:
    """FID vs epoch of one protocol: one panel per averaged weight set (EMA decay), each with
    every series' raw curve (solid) and that weight set's curve (dashed); y axis log or
    linear by ``scale`` (`fid_log_scale`)."""
    panels = variants(summary) or [None]
    fig, axes, ncols = panel_grid(len(panels), 2.3, 1.0)
    series = list(summary["series"].drop_duplicates())
    for ax, variant in zip(axes, panels, strict=False):
        curves = [(rows[rows["variant"] == v], series_colour(name), style)
                  for name in series for rows in [summary[summary["series"] == name]]
                  for v, style in [("raw", "-"), (variant, "--")] if v is not None]
        curves = [c for c in curves if not c[0].empty]
        best = [c[0].loc[c[0]["mean"].idxmin(), "epoch"] for c in curves]
        for (rows, colour, style), dx in zip(curves, star_shifts(best, summary["epoch"])):
            _fid_curve(ax, rows, colour, style, dx)
        ax.set_title(variant or "raw weights (no EMA rows)")
        epoch_axis(ax)
    log = fid_log_scale(summary, scale)
    for ax in axes[::ncols]:
        ax.set_ylabel("FID (lower is better" + (", log scale)" if log else ")"))
    if log:
        log_axis(axes[0])  # shared y: every panel follows
    fig.suptitle(title)
    fig.legend(handles=_fid_legend(series, summary), loc="outside lower center",
               ncol=2 if ncols == 1 else 4, frameon=False)
    return fig


@_paper
def prc_figure(summary: pd.DataFrame, title: str) -> Figure | None:
    """Precision (left) and recall (right) vs epoch: every series' raw curve solid, each
    averaged weight set dashed (then dotted, dash-dotted), ± std over seeds as a band. Longer
    averages are reported to trade recall (diversity) for precision (fidelity). None when no
    row has precision and recall."""
    if "precision_mean" not in summary or summary["precision_mean"].isna().all():
        return None
    fig = Figure(figsize=(TWO_COLUMN, 2.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    series = list(summary["series"].drop_duplicates())
    weight_sets = ["raw"] + variants(summary)
    styles = {v: STYLES[i % len(STYLES)] for i, v in enumerate(weight_sets)}
    for ax, metric in zip(axes, ("precision", "recall"), strict=True):
        for name in series:
            for variant in weight_sets:
                rows = summary[(summary["series"] == name) & (summary["variant"] == variant)]
                rows = rows.dropna(subset=[f"{metric}_mean"])
                if rows.empty:
                    continue
                _band(ax, rows["epoch"], rows[f"{metric}_mean"], rows[f"{metric}_std"],
                      series_colour(name), styles[variant])
                ax.scatter(rows["epoch"], rows[f"{metric}_mean"], s=8,
                           color=series_colour(name), zorder=3)
        ax.set_title(f"{metric} (higher is better)")
        epoch_axis(ax)
    axes[0].set_ylabel("share of images")
    handles = [Line2D([], [], color=series_colour(s), label=s) for s in series]
    handles += [Line2D([], [], color="black", ls=styles[v],
                       label="raw weights" if v == "raw" else v) for v in weight_sets]
    if (summary["precision_n"] > 1).any():
        handles.append(Patch(color="grey", alpha=0.3, label="± std over seeds"))
    fig.suptitle(title)
    fig.legend(handles=handles, loc="outside lower center", ncol=4, frameon=False)
    return fig


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


@_paper
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
                _band(ax, stats.index, stats["mean"], stats["std"], model_colour(model),
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


@_paper
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
                _band(ax, stats.index, stats["mean"], stats["std"], model_colour(model),
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


@_paper
def save_figure(fig: Figure, stem: Path, formats: Sequence[str]) -> list[Path]:
    """Save ``fig`` as ``<stem>.<format>`` for each format; returns the paths."""
    paths = [stem.parent / f"{stem.name}.{fmt}" for fmt in formats]
    # matplotlib's PDF backend subsets fonts through fontTools, which logs every table at INFO
    logging.getLogger("fontTools").setLevel(logging.WARNING)
    for path in paths:
        fig.savefig(path, bbox_inches="tight")  # nothing (legend, long titles) cut at the edge
    return paths
