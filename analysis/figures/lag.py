"""BEMA and the EMA's lag as a figure: FID against epoch of every series with a BEMA, raw, its
exponential and power EMAs and BEMA (`lag_figure`).
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from .style import (
    ONE_COLUMN,
    STYLES,
    band,
    epoch_axis,
    fid_log_scale,
    log_axis,
    paper_style,
    series_colour,
)


@paper_style
def lag_figure(summary: pd.DataFrame, title: str, scale: str = "auto") -> Figure | None:
    """FID against epoch of every series with a BEMA: raw (solid), its exponential and power
    EMAs (dashed, dotted), BEMA (thick); ± std over seeds as a band."""
    series = [s for s, part in summary.groupby("series", sort=False)
              if (part["variant"] == "BEMA").any()]
    if not series:
        return None
    fig = Figure(figsize=(ONE_COLUMN, 2.6 * len(series) + 0.6), layout="constrained")
    axes = fig.subplots(len(series), 1, squeeze=False).ravel()
    for ax, name in zip(axes, series, strict=True):
        part = summary[summary["series"] == name]
        averages = [v for v in part["variant"].drop_duplicates() if v not in ("raw", "BEMA")]
        curves = [("raw", "black", "-"), *((v, f"C{2 + i}", STYLES[1 + i % 3])
                                           for i, v in enumerate(averages[:3])),
                  ("BEMA", series_colour(name), "-")]
        for variant, colour, style in curves:
            rows = part[part["variant"] == variant].sort_values("epoch")
            if rows.empty:
                continue
            band(ax, rows["epoch"], rows["mean"], rows["std"], colour, style, label=variant)
            if variant == "BEMA":
                ax.lines[-1].set_linewidth(2.2)
        if fid_log_scale(part, scale):
            log_axis(ax)
        ax.set_title(name)
        ax.set_ylabel("FID (lower is better)")
        epoch_axis(ax)
        ax.legend(frameon=False, fontsize=7)
    fig.suptitle(title)
    return fig
