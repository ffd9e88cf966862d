"""Which EMA length, as figures: FID against the EMA length sigma_rel (log axis), one panel per
chosen epoch, raw at the left edge (`fid_length_figure`), and the best length against epoch
(`best_length_figure`); from analysis.stats.lengths' frames.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory

from ..stats.lengths import AVERAGED, OWN_METHOD
from .style import (
    ONE_COLUMN,
    epoch_axis,
    fid_log_scale,
    log_axis,
    panel_grid,
    paper_style,
    series_colour,
)

RAW_GAP = 2.5  # raw is drawn this factor left of the shortest length (log axis)
MAX_PANELS = 4


def panel_epochs(lengths: pd.DataFrame, most: int = MAX_PANELS) -> list[int]:
    """Every evaluated epoch when there are at most ``most``, else ``most`` spread evenly,
    the first and the last among them."""
    epochs = sorted(lengths.loc[lengths["kind"].isin(AVERAGED), "epoch"].unique())
    if len(epochs) <= most:
        return [int(e) for e in epochs]
    picks = np.linspace(0, len(epochs) - 1, most).round().astype(int)
    return [int(epochs[i]) for i in sorted(set(picks))]


def _length_panel(ax, rows: pd.DataFrame, x_raw: float, colour: str) -> None:
    """One series at one epoch: averaged weight sets against sigma_rel (line through them),
    reconstructed ○, tracked ◇, fixed decay ■ with a dotted vertical line, best ★; raw ✕ at
    ``x_raw``."""
    avg = rows[rows["kind"].isin(AVERAGED) & rows["sigma_rel"].notna()].sort_values("sigma_rel")
    if not avg.empty:
        ax.plot(avg["sigma_rel"], avg["mean"], "-", color=colour, lw=1)
        ax.errorbar(avg["sigma_rel"], avg["mean"], yerr=avg["std"].fillna(0), fmt="none",
                    ecolor=colour, elinewidth=0.8, capsize=1.5)
        recon = avg[(avg["kind"] == "phema") & ~avg["tracked"]]
        tracked = avg[(avg["kind"] == "phema") & avg["tracked"]]
        fixed = avg[avg["kind"] == "ema"]
        ax.scatter(recon["sigma_rel"], recon["mean"], s=14, marker="o", color=colour, zorder=3)
        ax.scatter(tracked["sigma_rel"], tracked["mean"], s=22, marker="D", facecolors="white",
                   edgecolors=colour, linewidths=1.2, zorder=4)
        ax.scatter(fixed["sigma_rel"], fixed["mean"], s=26, marker="s", color=colour,
                   edgecolors="black", linewidths=0.7, zorder=4)
        for sigma in fixed["sigma_rel"]:
            ax.axvline(sigma, color=colour, ls=":", lw=0.9)
        best = avg.loc[avg["mean"].idxmin()]
        ax.scatter([best["sigma_rel"]], [best["mean"]], marker="*", s=110, color=colour,
                   edgecolors="black", linewidths=0.6, zorder=5)
    # BEMA has no single length (its bias term is not an average of past weights): a
    # horizontal line at its FID across the panel, a triangle at the right edge
    for _, own in rows[rows["kind"] == OWN_METHOD].iterrows():
        ax.axhline(own["mean"], color=colour, ls="-.", lw=1.0)
        ax.plot([1.0], [own["mean"]], marker=">", ms=7, color=colour, mec="black", mew=0.5,
                ls="", transform=blended_transform_factory(ax.transAxes, ax.transData),
                clip_on=False, zorder=5)
    raw = rows[rows["kind"] == "raw"]
    if not raw.empty:
        ax.errorbar([x_raw], raw["mean"], yerr=raw["std"].fillna(0), fmt="X", ms=6,
                    color=colour, mec="black", mew=0.5, capsize=1.5, zorder=4)


def _length_legend(series: list[str], own_method: bool = False) -> list:
    handles = [Line2D([], [], color=series_colour(s), label=s) for s in series]
    if own_method:
        handles.append(Line2D([], [], color="grey", marker=">", ls="-.", mec="black",
                              label="BEMA (no single length: its FID as a line)"))
    return handles + [
        Line2D([], [], color="grey", marker="X", ls="", mec="black", label="raw weights"),
        Line2D([], [], color="grey", marker="o", ls="", label="post-hoc EMA (reconstructed)"),
        Line2D([], [], color="grey", marker="D", ls="", mfc="white", label="post-hoc EMA "
               "(tracked)"),
        Line2D([], [], color="grey", marker="s", ls=":", mec="black",
               label="fixed-decay EMA (dotted: its σrel)"),
        Line2D([], [], color="grey", marker="*", ms=9, ls="", mec="black", label="best length"),
    ]


@paper_style
def fid_length_figure(lengths: pd.DataFrame, title: str, scale: str = "auto"
                      ) -> Figure | None:
    """FID against EMA length (sigma_rel, log axis), one panel per chosen epoch
    (`panel_epochs`), one curve per series; raw at the left edge. None without lengths."""
    epochs = panel_epochs(lengths)
    sigmas = lengths["sigma_rel"].dropna()
    sigmas = sigmas[sigmas > 0]
    if not epochs or sigmas.empty:
        return None
    x_raw = sigmas.min() / RAW_GAP
    fig, axes, ncols = panel_grid(len(epochs), 2.2, 1.1)
    series = list(lengths["series"].drop_duplicates())
    shown = lengths[lengths["epoch"].isin(epochs)]
    log_y = fid_log_scale(shown, scale)
    for ax, epoch in zip(axes, epochs, strict=False):
        for name in series:
            rows = shown[(shown["series"] == name) & (shown["epoch"] == epoch)]
            _length_panel(ax, rows, x_raw, series_colour(name))
        log_axis(ax, "x")
        ax.set_xlim(x_raw / 1.6, sigmas.max() * 1.6)
        # raw has no length: a shaded strip at the left edge says so
        ax.axvspan(x_raw / 1.6, x_raw * 1.35, color="grey", alpha=0.12, lw=0)
        ax.text(x_raw, 0.02, "raw", transform=blended_transform_factory(ax.transData,
                                                                          ax.transAxes),
                ha="center", va="bottom")
        ax.set_title(f"epoch {epoch}")
        ax.set_xlabel("EMA length σrel (log)")
    if log_y:
        log_axis(axes[0])
    for ax in axes[::ncols]:
        ax.set_ylabel("FID (lower is better)")
    fig.suptitle(title)
    fig.legend(handles=_length_legend(series, (shown["kind"] == OWN_METHOD).any()),
               loc="outside lower center", ncol=3, frameon=False)
    return fig


@paper_style
def best_length_figure(best: pd.DataFrame) -> Figure | None:
    """The best EMA length (sigma_rel, log axis) against epoch, one line per series. None
    without best lengths."""
    if best.empty:
        return None
    fig = Figure(figsize=(ONE_COLUMN, 2.4), layout="constrained")
    ax = fig.add_subplot()
    for name, rows in best.groupby("series", sort=False):
        ax.plot(rows["epoch"], rows["sigma_rel"], "-o", ms=4, color=series_colour(name),
                label=name)
    log_axis(ax)
    epoch_axis(ax)
    ax.set_ylabel("best EMA length σrel (log)")
    ax.set_title("EMA length with the lowest FID")
    ax.legend(frameon=False)
    return fig
