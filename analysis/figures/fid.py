"""FID against epoch of one protocol, the report's first figure (`fid_figure`: one panel per
averaged weight set, every series' raw curve solid and that weight set's dashed, the best epochs
starred), and precision and recall against epoch (`prc_figure`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..stats.seeds import variants
from .style import (
    STYLES,
    TWO_COLUMN,
    band,
    epoch_axis,
    fid_log_scale,
    log_axis,
    panel_grid,
    paper_style,
    series_colour,
    star_shifts,
)


def _fid_curve(ax, rows: pd.DataFrame, colour: str, style: str, star_dx: float = 0.0) -> None:
    """Seed-mean FID by epoch; hollow markers where the EMA was mostly initial weights; a
    star on the best (lowest seed-mean) epoch, shifted by ``star_dx`` epochs so that the
    stars of curves that are best at one epoch do not cover each other (raw filled, EMA
    hollow with a thick edge)."""
    if rows.empty:
        return
    x, y, low = rows["epoch"], rows["mean"], rows["share_low"].astype(bool)
    band(ax, x, y, rows["std"], colour, style)
    ax.scatter(x[~low], y[~low], s=10, color=colour, zorder=3)
    ax.scatter(x[low], y[low], s=16, facecolors="white", edgecolors=colour, linewidths=1,
               zorder=4)
    best = rows.loc[y.idxmin()]
    raw = style == "-"
    ax.scatter([best["epoch"] + star_dx], [best["mean"]], marker="*", s=90,
               facecolors=colour if raw else "white", edgecolors="black" if raw else colour,
               linewidths=0.6 if raw else 1.4, zorder=5)


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


@paper_style
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


@paper_style
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
                band(ax, rows["epoch"], rows[f"{metric}_mean"], rows[f"{metric}_std"],
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
