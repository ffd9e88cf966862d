"""Is the late FID rise overfitting? The held-out and training losses with their gap per weight set
(`heldout_figure`) and the memorisation rate against epoch (`memorization_figure`), from
analysis.stats.overfitting's frames. Each is None when its columns are absent, and the report
then says so.
"""

from __future__ import annotations

import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from ..load import model_name
from ..stats.seeds import variant_rank
from .style import TWO_COLUMN, epoch_axis, model_colour, paper_style

QUANTITIES = {"holdout": "held-out", "train_fixed": "training (fixed set)", "gap": "gap"}


def _weights_rank(label: str) -> tuple:
    kind = "raw" if label == "raw" else "ema" if label.startswith("EMA") else "phema"
    number = label.rsplit(" ", 1)[-1]
    decay = float(number) if kind == "ema" else float("nan")
    return variant_rank(kind, decay, label)


@paper_style
def heldout_figure(long: pd.DataFrame) -> Figure | None:
    """Per model (rows): held-out and fixed-training losses (left; held-out solid,
    training dashed), and their gap (right), one line style per weight set... (colour per
    weight set, since one model per row). None without held-out columns."""
    if long.empty:
        return None
    models = list(long["model"].drop_duplicates())
    fig = Figure(figsize=(TWO_COLUMN, 1.3 + 1.9 * len(models)), layout="constrained")
    axes = fig.subplots(len(models), 2, squeeze=False, sharex=True)
    for (ax_loss, ax_gap), model in zip(axes, models, strict=True):
        rows = long[long["model"] == model]
        weights = sorted(rows["weights"].unique(), key=_weights_rank)
        for i, w in enumerate(weights):
            colour = model_colour(model) if w == "raw" else f"C{(i + 2) % 10}"
            for ax, quantity, style in [(ax_loss, "holdout", "-"),
                                        (ax_loss, "train_fixed", "--"), (ax_gap, "gap", "-")]:
                stats = rows[(rows["weights"] == w) & (rows["quantity"] == quantity)]
                stats = stats.groupby("epoch")["value"].mean()
                if stats.empty:
                    continue
                label = f"{w} {QUANTITIES[quantity]}" if ax is ax_loss else w
                ax.plot(stats.index, stats.values, style, marker=".", color=colour,
                        label=label)
        ax_loss.set_title(f"{model_name(model)}: held-out (solid), training (dashed)")
        ax_loss.set_ylabel("loss on fixed (image, t, noise)")
        ax_gap.axhline(0, color="grey", lw=0.8)
        ax_gap.set_title(f"{model_name(model)}: gap = held-out - training")
        ax_gap.set_ylabel("loss gap")
        ax_gap.legend(frameon=False)
    for ax in axes[-1]:
        epoch_axis(ax)
    return fig


@paper_style
def memorization_figure(memo: pd.DataFrame, title: str) -> Figure | None:
    """Memorisation rate (%) against epoch, one panel per series: raw black, the fixed-decay
    EMAs in colours, post-hoc lengths shaded from light (short) to dark (long), one legend
    below for all panels. None without memorisation rows."""
    if memo.empty:
        return None
    series = list(memo["series"].drop_duplicates())
    fig = Figure(figsize=(TWO_COLUMN, 2.6), layout="constrained")
    axes = fig.subplots(1, len(series), squeeze=False, sharey=True)[0]
    order = sorted(memo[["kind", "decay", "variant"]].drop_duplicates().itertuples(index=False),
                   key=lambda r: variant_rank(r.kind, r.decay, r.variant))
    posthoc = [r.variant for r in order if r.kind == "phema"]
    shades = colormaps["viridis_r"]
    colours, fixed = {}, 0
    for r in order:
        if r.kind == "raw":
            colours[r.variant] = ("black", "-", 1.6)
        elif r.kind == "phema":  # light = short, dark = long
            shade = 0.15 + 0.75 * posthoc.index(r.variant) / max(1, len(posthoc) - 1)
            colours[r.variant] = (shades(shade), "-", 0.9)
        else:
            colours[r.variant] = (f"C{(fixed + 1) % 10}", "--", 1.4)
            fixed += 1
    for ax, name in zip(axes, series, strict=True):
        for r in order:
            rows = memo[(memo["series"] == name) & (memo["variant"] == r.variant)]
            if rows.empty:
                continue
            rows = rows.sort_values("epoch")
            colour, style, width = colours[r.variant]
            ax.plot(rows["epoch"], 100 * rows["mean"], style, marker=".", color=colour,
                    lw=width, label=r.variant)
        ax.set_title(name)
        epoch_axis(ax)
    axes[0].set_ylabel("generated images copying\na training image (%)")
    top = 100 * float(memo["mean"].max())
    axes[0].set_ylim(0, max(1.0, 1.15 * top))  # all zero: a 0-1% axis, not a line at mid-height
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle(title)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)),
               frameon=False)
    return fig
