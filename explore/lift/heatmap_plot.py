"""The error-heatmap figure: error_64 and error_total over the grid, with sampling paths drawn."""

from __future__ import annotations

import os

import numpy as np

from explore.core.files import atomic_write
from explore.lift.heatmap import Heatmap


def plot_heatmap(heatmap: Heatmap, paths: dict[str, list[tuple[float, float]]],
                 out_png: str | os.PathLike, *, title: str | None = None) -> None:
    """Two panels, error_64 and error_total on a log colour scale, with the paths drawn on both.

    x axis: the high ("64") scale's grid timestep (index i), y axis: the low ("32") scale's (j);
    (0, 0), the noisiest cell, is at the bottom left. A path is a list of (i, j) grid indices
    (fractional indices are fine, see `explore.lift.dp_path.fractional_grid_index`). The PNG is
    written atomically. Uses the Agg canvas directly, so no pyplot state or display is involved.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure

    n = heatmap.grid_size
    fig = Figure(figsize=(13, 6))
    FigureCanvasAgg(fig)
    ticks = np.unique(np.linspace(0, n - 1, min(n, 8)).round().astype(int))
    panels = [(heatmap.error_64, "64 (high) scale error"),
              (heatmap.error_total, "total error (64 + 32)")]
    for col, (err, name) in enumerate(panels):
        ax = fig.add_subplot(1, 2, col + 1)
        err = np.asarray(err, dtype=np.float64)
        positive = err[np.isfinite(err) & (err > 0)]
        if positive.size:
            norm = LogNorm(vmin=positive.min(), vmax=positive.max())
            shown = np.where(err > 0, err, np.nan)  # log scale: non-positive cells left blank
        else:
            norm, shown = Normalize(), err
        im = ax.imshow(shown.T, origin="lower", norm=norm, cmap="viridis", aspect="equal",
                       extent=(-0.5, n - 0.5, -0.5, n - 0.5), interpolation="nearest")
        fig.colorbar(im, ax=ax, label="error (log scale)" if positive.size else "error")
        for label, path in paths.items():
            xs = [p[0] for p in path]
            ys = [p[1] for p in path]
            ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.5, label=label)
        ax.set_xticks(ticks, [str(int(heatmap.timesteps[t])) for t in ticks])
        ax.set_yticks(ticks, [str(int(heatmap.timesteps[t])) for t in ticks])
        ax.set_xlabel("t_64 (high scale timestep)")
        ax.set_ylabel("t_32 (low scale timestep)")
        ax.set_title(name)
    if paths:  # one legend under both panels: paths cover the upper-left and lower-right corners
        handles, labels = fig.axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(paths), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07 if paths else 0, 1, 0.95 if title else 1))
    atomic_write(out_png, lambda f: fig.savefig(f, format="png", dpi=110))
