"""Does BEMA remove the EMA's lag? The comparison of a run that tracks a BEMA (weight set `bema`,
Block & Zhang 2025) beside an exponential EMA: paired per sampling seed, early in training
(epochs 1-3, where an EMA still carries its initial weights) and at the final epoch, against
the EMA and against the raw weights.

    table = lag_table(summary)           # per series: epochs x weight sets, BEMA - EMA, BEMA - raw
    lines = lag_verdicts(table)          # one or two sentences per series
    fig = lag_figure(summary, title)     # FID against epoch: raw, the averages, BEMA

Read from ``analysis.tables.summarize`` (seed statistics per series, weight set and epoch); the
differences and their intervals are ``analysis.tables.paired``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure

from .figures import (
    ONE_COLUMN,
    STYLES,
    _band,
    _paper,
    epoch_axis,
    fid_log_scale,
    log_axis,
    series_colour,
)
from .stats import Interval
from .tables import fid_cell, fmt_gain, paired

EARLY = (1, 2, 3)         # the epochs where an EMA's lag shows (its initial weights)
MAX_POWER_COLUMNS = 2     # power-function EMAs shown beside (a length sweep has its own table)


@dataclass
class LagRow:
    epoch: int
    vs_ema: Interval | None   # BEMA - EMA, paired
    vs_raw: Interval | None   # BEMA - raw, paired


def _by_epoch(part: pd.DataFrame, variant: str) -> pd.DataFrame:
    return part[part["variant"] == variant].set_index("epoch")


def _row(frame: pd.DataFrame, epoch: int) -> pd.Series | None:
    return frame.loc[epoch] if epoch in frame.index else None


def _reference_ema(part: pd.DataFrame) -> str | None:
    """The exponential EMA BEMA is compared with: the longest decay the run tracks (the one
    that lags most), or None."""
    emas = part[part["kind"] == "ema"].drop_duplicates("variant")
    if emas.empty:
        return None
    return str(emas.loc[emas["decay"].idxmax(), "variant"])


def lag_table(summary: pd.DataFrame, early=EARLY) -> pd.DataFrame | None:
    """One table of every series that has a BEMA: rows "<series> @ <epoch>ep" for the early
    epochs it has and its final epoch; columns raw, the reference EMA, up to two power EMAs,
    BEMA (mean ± std over seeds), "BEMA - EMA" and "BEMA - raw" (paired, 95% interval, * when
    it excludes 0). ``attrs["rows"]``: series -> [LagRow], ``attrs["ema"]``: series -> the
    EMA's label. None when no series has a BEMA."""
    rows, lags, refs, columns = {}, {}, {}, None
    for series, part in summary.groupby("series", sort=False):
        bema = _by_epoch(part, "BEMA")
        if bema.empty:
            continue
        ref = _reference_ema(part)
        powers = list(part.loc[part["kind"] == "phema", "variant"].drop_duplicates())
        shown = ["raw", *([ref] if ref else []), *powers[:MAX_POWER_COLUMNS], "BEMA"]
        columns = columns or [*["EMA" if v == ref else v for v in shown], "BEMA - EMA",
                              "BEMA - raw"]
        frames = {v: _by_epoch(part, v) for v in shown}
        final = int(bema.index.max())
        epochs = [e for e in early if e in bema.index and e < final] + [final]
        lags[series], refs[series] = [], ref
        for epoch in epochs:
            cells = {v: _row(frames[v], epoch) for v in shown}
            lag = LagRow(epoch, paired(cells.get(ref), cells["BEMA"]) if ref else None,
                         paired(cells["raw"], cells["BEMA"]))
            lags[series].append(lag)
            label = f"{series} @ {epoch}ep" + (" (final)" if epoch == final else "")
            rows[label] = [*(fid_cell(cells[v]) for v in shown), fmt_gain(lag.vs_ema),
                           fmt_gain(lag.vs_raw)]
    if not rows:
        return None
    width = max(len(r) for r in rows.values())
    table = pd.DataFrame.from_dict({k: v + [""] * (width - len(v)) for k, v in rows.items()},
                                   orient="index", columns=columns[:width])
    table.index.name = "Model @ epoch"
    table.attrs["rows"], table.attrs["ema"] = lags, refs
    return table


def _epochs_text(epochs: list[int]) -> str:
    """'epoch 3', 'epochs 1, 2' or 'no epoch'."""
    if not epochs:
        return "no epoch"
    return ("epoch " if len(epochs) == 1 else "epochs ") + ", ".join(map(str, epochs))


def _compare(rows: list[LagRow], attr: str) -> tuple[list[int], list[int], list[int]]:
    """Epochs where BEMA is significantly better, worse, and not significantly different."""
    better, worse, even = [], [], []
    for r in rows:
        gain = getattr(r, attr)
        if gain is None:
            continue
        (better if gain.significant and gain.hi < 0 else
         worse if gain.significant and gain.lo > 0 else even).append(r.epoch)
    return better, worse, even


def lag_verdicts(table: pd.DataFrame | None, early=EARLY) -> list[str]:
    """Per series: does BEMA beat the EMA early and at the final epoch, and where does it
    lose against raw (95% paired intervals; lower FID is better)."""
    if table is None:
        return []
    out = []
    for series, rows in table.attrs["rows"].items():
        ema = table.attrs["ema"][series]
        final = rows[-1]
        first = [r for r in rows if r.epoch in early and r is not final]
        parts = []
        if ema is not None:
            better, worse, even = _compare(first, "vs_ema")
            if first:
                parts.append(f"early ({_epochs_text([r.epoch for r in first])}) BEMA "
                             f"beats {ema} at {len(better)} of {len(first)} epochs"
                             + (f", loses at {_epochs_text(worse)}" if worse else ""))
            end = final.vs_ema
            verdict = ("beats" if end is not None and end.significant and end.hi < 0 else
                       "loses to" if end is not None and end.significant and end.lo > 0 else
                       "does not differ significantly from")
            parts.append(f"at the final epoch ({final.epoch}) it {verdict} {ema} "
                         f"(BEMA - EMA {fmt_gain(end)})")
        better, worse, _ = _compare(rows, "vs_raw")
        parts.append("against raw it loses at " + _epochs_text(worse)
                     + (f" and wins at {_epochs_text(better)}" if better else "")
                     if worse else "it never loses significantly against raw"
                     + (f" (wins at {_epochs_text(better)})" if better else ""))
        out.append(f"**{series}, BEMA:** " + "; ".join(parts) + ".")
    return out


@_paper
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
            _band(ax, rows["epoch"], rows["mean"], rows["std"], colour, style, label=variant)
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
