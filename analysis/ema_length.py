"""Which EMA length? FID against the averaging length of every weight set (issue 15).

With post-hoc EMA (``phema@<sigma_rel>`` rows reconstructed at several lengths) or several
``ema@<decay>`` tracks, every averaged weight set sits on one axis: its ``sigma_rel`` (EDM2's
relative std of the averaging profile; fid.csv's ``sigma_rel`` column, written by evaluation
for exponential EMAs too, where it grows shorter as training goes on: sqrt(d) / ((1 - d) T)).
Raw weights have no length: they are drawn left of the shortest one, labelled "raw".

- `length_summary`: ``summarize``'s rows of one protocol with a ``sigma_rel`` column.
- `best_lengths`: per (series, epoch) the lowest seed-mean FID among averaged weight sets.
- `length_table`: that, as the report's table (best length, its FID, raw, fixed decay).
- `length_results`: the question "which EMA length?" as one table: a row per weight set (raw,
  fixed decays, post-hoc lengths), its best and final FID with EMA - raw and its interval.
- `fid_length_figure`, `best_length_figure`: the figures.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory

from explore.ema.names import fmt_value, parse_weights

from .figures import (
    ONE_COLUMN,
    _paper,
    epoch_axis,
    fid_log_scale,
    log_axis,
    panel_grid,
    series_colour,
)
from .tables import (
    GAIN_COLUMN,
    SeriesResult,
    fid_cell,
    fmt_count,
    fmt_fid,
    fmt_gain,
    results_table,
    variant_rank,
    variants,
)

AVERAGED = ("ema", "phema")
OWN_METHOD = "bema"  # an average with no single length (BEMA): drawn as its own marker
NO_LENGTH = "none (BEMA)"  # its σrel cell
BEST_MARK = "★"  # the lowest FID at its best epoch among a series' averaged weight sets
LENGTH_COLUMNS = ["Weights", "σrel", "Best FID", f"{GAIN_COLUMN} at best", "Final FID",
                  f"{GAIN_COLUMN} at final"]
RAW_GAP = 2.5  # raw is drawn this factor left of the shortest length (log axis)
MAX_PANELS = 4


def _sigma_of(weights_id: str) -> float:
    """A phema weight set's sigma_rel from its name (rows from before the column)."""
    parsed = parse_weights(weights_id)
    return parsed.sigma_rel if parsed.kind == "phema" else math.nan


def length_summary(summary: pd.DataFrame, fid: pd.DataFrame) -> pd.DataFrame:
    """``summary`` rows with ``sigma_rel`` (mean over the eval rows of that series, weight set
    and epoch; from the name for phema rows without the column) and ``tracked`` (a phema
    weight set tracked during training, not reconstructed: run.json's ema_sigma_rels)."""
    if summary.empty:
        return summary.assign(sigma_rel=pd.Series(dtype=float), tracked=False)
    keys = ["protocol", "series", "weights_id", "epoch"]
    rows = fid.assign(sigma_rel=pd.to_numeric(fid.get("sigma_rel"), errors="coerce"))
    sigma = rows.groupby(keys, dropna=False)["sigma_rel"].mean().rename("sigma_rel")
    out = summary.merge(sigma.reset_index(), on=keys, how="left")
    by_name = out["weights_id"].map(_sigma_of)
    out["sigma_rel"] = out["sigma_rel"].where(out["sigma_rel"].notna(), by_name)
    out.loc[out["kind"] == "raw", "sigma_rel"] = math.nan
    out["tracked"] = False
    return out


def mark_tracked(lengths: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Set ``tracked`` where a phema weight set was tracked during training by a run of that
    model (run.json ``ema_sigma_rels``)."""
    if "ema_sigma_rels" not in runs:
        return lengths
    tracked = {(m, f"phema@{fmt_value(s)}") for m, sigmas in zip(runs["model"],
                                                                   runs["ema_sigma_rels"])
               if isinstance(sigmas, list) for s in sigmas}
    keys = zip(lengths["model"], lengths["weights_id"])
    return lengths.assign(tracked=[k in tracked for k in keys])


def has_several_lengths(summary: pd.DataFrame) -> bool:
    """More than one averaged weight set (phema lengths or several ema decays)."""
    averaged = summary[summary["kind"].isin(AVERAGED)]
    return averaged["weights_id"].nunique() > 1


def best_lengths(lengths: pd.DataFrame) -> pd.DataFrame:
    """Per (series, epoch): the averaged weight set with the lowest seed-mean FID (only those
    with a known sigma_rel), as the rows of ``lengths``."""
    averaged = lengths[lengths["kind"].isin(AVERAGED) & lengths["sigma_rel"].notna()]
    averaged = averaged.dropna(subset=["mean"])
    if averaged.empty:
        return averaged
    best = averaged.loc[averaged.groupby(["series", "epoch"], sort=False)["mean"].idxmin()]
    return best.sort_values(["series", "epoch"], kind="stable").reset_index(drop=True)


def _fid_text(row: pd.Series | None) -> str:
    if row is None:
        return ""
    return fmt_fid(row["mean"], row["std"], row["n"], fmt_count(row))


def length_table(lengths: pd.DataFrame) -> pd.DataFrame:
    """One row per (series, epoch): best length (sigma_rel and weight set), its FID, the raw
    FID and the FID of every fixed-decay EMA (``ema@`` tracks), "mean ± std (n)" over seeds."""
    best = best_lengths(lengths)
    decays = sorted(lengths.loc[lengths["kind"] == "ema", "weights_id"].unique(),
                    key=lambda w: -parse_weights(w).decay)
    rows = []
    for _, b in best.iterrows():
        at = lengths[(lengths["series"] == b["series"]) & (lengths["epoch"] == b["epoch"])]
        pick = {w: r for w, r in zip(at["weights_id"], (r for _, r in at.iterrows()))}
        row = {"Model": b["series"], "epoch": int(b["epoch"]),
               "best σrel": f"{b['sigma_rel']:.3g}", "best weights": b["weights_id"],
               "FID at best": _fid_text(b), "raw FID": _fid_text(pick.get("raw"))}
        for w in decays:
            r = pick.get(w)
            sigma = f" (σrel {r['sigma_rel']:.3g})" if r is not None and pd.notna(
                r["sigma_rel"]) else ""
            row[f"EMA {w.split('@')[1]} FID"] = _fid_text(r) + sigma
        rows.append(row)
    return pd.DataFrame(rows).set_index("Model") if rows else pd.DataFrame()


def series_results(summary: pd.DataFrame) -> dict[str, dict[str, SeriesResult]]:
    """variant -> series -> `SeriesResult` (EMA - raw at the best and final epochs), for every
    averaged weight set of one protocol, in table order."""
    return {v: results_table(summary, v).attrs["results"] for v in variants(summary)}


def best_variants(results: dict[str, dict[str, SeriesResult]]) -> dict[str, str]:
    """series -> the averaged weight set whose best-epoch seed-mean FID is lowest."""
    best: dict[str, tuple[float, str]] = {}
    for variant, by_series in results.items():
        for series, r in by_series.items():
            if r.best_ema is not None and (series not in best
                                           or r.best_ema["mean"] < best[series][0]):
                best[series] = (float(r.best_ema["mean"]), variant)
    return {series: variant for series, (_, variant) in best.items()}


def _final_sigma(lengths: pd.DataFrame, series: str, variant: str, epoch: int) -> float:
    rows = lengths[(lengths["series"] == series) & (lengths["variant"] == variant)]
    at = rows.loc[rows["epoch"] == epoch, "sigma_rel"].dropna()
    return float(at.iloc[0]) if len(at) else math.nan


def length_results(summary: pd.DataFrame, lengths: pd.DataFrame,
                   results: dict[str, dict[str, SeriesResult]] | None = None) -> pd.DataFrame:
    """"Which EMA length?" as one table (issue 22: not one results table per length): per
    series, a row for raw and one per averaged weight set, ordered by σrel at the final epoch
    (a fixed decay's shrinks as training goes on; unknown last); columns the best FID
    (@ epoch), EMA - raw there (paired with raw at its own best epoch, as the results table),
    the final-epoch FID and EMA - raw there. The lowest best FID of a series' averaged weight
    sets is marked BEST_MARK, tracked post-hoc EMAs "(tracked)". ``results``: `series_results`
    when already computed."""
    results = series_results(summary) if results is None else results
    best = best_variants(results)
    tracked = {(s, v) for s, v, t in zip(lengths.get("series", []), lengths.get("variant", []),
                                         lengths.get("tracked", []), strict=True) if t}
    rows = []
    for series, part in summary.groupby("series", sort=False):
        raw = part[part["variant"] == "raw"].set_index("epoch")
        if not raw.empty:
            best_raw = raw.loc[raw["mean"].idxmin()]
            rows.append({"Model": series, "Weights": "raw", "σrel": "",
                         "Best FID": fid_cell(best_raw, with_epoch=True), "Final FID":
                         fid_cell(raw.loc[raw.index.max()])})
        averaged = []
        for variant, by_series in results.items():
            r = by_series.get(series)
            if r is None or (r.best_ema is None and r.last_ema is None):
                continue
            sigma = _final_sigma(lengths, series, variant, r.final)
            kind = part.loc[part["variant"] == variant].iloc[0]
            key = (math.isnan(sigma), sigma if not math.isnan(sigma) else 0.0,
                   variant_rank(kind["kind"], kind["decay"], variant))
            label = variant + (" (tracked)" if (series, variant) in tracked else "")
            label += f" {BEST_MARK}" if best.get(series) == variant else ""
            averaged.append((key, {
                "Model": series, "Weights": label,
                "σrel": (NO_LENGTH if kind["kind"] == OWN_METHOD else
                         "" if math.isnan(sigma) else f"{sigma:.3g}"),
                "Best FID": fid_cell(r.best_ema, with_epoch=True),
                f"{GAIN_COLUMN} at best": fmt_gain(r.best_gain),
                "Final FID": fid_cell(r.last_ema), f"{GAIN_COLUMN} at final":
                fmt_gain(r.final_gain)}))
        rows += [row for _, row in sorted(averaged, key=lambda a: a[0])]
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).set_index("Model").reindex(columns=LENGTH_COLUMNS).fillna("")
    table.attrs["results"], table.attrs["best"] = results, best
    return table


def chosen_epochs(lengths: pd.DataFrame, most: int = MAX_PANELS) -> list[int]:
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


def _legend(series: list[str], own_method: bool = False) -> list:
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


@_paper
def fid_length_figure(lengths: pd.DataFrame, title: str, scale: str = "auto"
                      ) -> Figure | None:
    """FID against EMA length (sigma_rel, log axis), one panel per chosen epoch
    (`chosen_epochs`), one curve per series; raw at the left edge. None without lengths."""
    epochs = chosen_epochs(lengths)
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
    fig.legend(handles=_legend(series, (shown["kind"] == OWN_METHOD).any()),
               loc="outside lower center", ncol=3, frameon=False)
    return fig


@_paper
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
