"""What every figure of a report shares: paper size (one column 3.5 in or two columns 7 in wide,
fonts 8 pt: `paper_style`), one colour per series, the ±std band, epoch and log axes, panel grids
and the FID axis' scale.

Figures are built with matplotlib's object API (``Figure``, no pyplot): nothing global is
switched, nothing is left open, and saving picks the Agg / PDF canvas from the file type.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import wraps

import matplotlib as mpl
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from ..load import SERIES_ORDER

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


def paper_style(build: Callable) -> Callable:
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


def band(ax, x, mean, std, colour: str, style: str, label: str | None = None) -> None:
    """Mean line with a ±std band (no band where std is undefined: one seed)."""
    ax.plot(x, mean, style, color=colour, label=label)
    std = std.fillna(0.0)
    ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)


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
