"""Tables of one FID protocol: the STUDY.md "expected results" table and the metrics by epoch.

Both are read from ``summarize`` (statistics over seeds per series, weight set and epoch) and
are written as Markdown, CSV and LaTeX.

Cells: "mean ± std (n=k)" over seeds (the mean alone for one seed), "@ 200ep" where the epoch
was chosen (best = the epoch whose seed-mean is lowest), and a dagger where an EMA was still
mostly its initial weights when evaluated. The seeds: with several training seeds the std is
over training seeds, each the mean of its sampling seeds ("n=3×5": 3 training x 5 sampling
seeds); with one training seed it is over sampling seeds.

"EMA - raw" is the paired difference (EMA minus raw, per training and sampling seed, on the
unrounded values; negative = EMA better for FID) with its 95% interval (analysis.stats) and a
star where the interval excludes 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from explore.run.results import parse_replicates

from .load import series_rank
from .stats import Interval, paired_interval

LOW_MARK = "†"  # EMA still mostly initial weights (ema_share_low) in at least one seed
SIGNIFICANT_MARK = "*"  # the 95% interval of EMA - raw excludes 0
NOT_AVAILABLE = "n/a"
GAIN_COLUMN = "EMA - raw"
RESULT_COLUMNS = ["Without EMA", "With EMA", GAIN_COLUMN]
SUMMARY_KEYS = ["protocol", "model", "series", "kind", "decay", "weights_id", "variant", "epoch"]
# per-epoch table: (summary column prefix, column suffix, scale, decimals)
OTHER_METRICS = [("kid", "KID×10³", 1e3, 2), ("precision", "precision", 1.0, 3),
                 ("recall", "recall", 1.0, 3)]
_LATEX_SYMBOLS = {"±": r"$\pm$", LOW_MARK: r"$^\dagger$", "σ": r"$\sigma$",
                  "×10³": r"$\times 10^3$", "×": r"$\times$"}
_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                   "^": r"\textasciicircum{}"}


def variant_rank(kind: str, decay: float, variant: str) -> tuple:
    """Sort key of weight sets: raw, then EMA by decreasing decay, post-hoc EMA, BEMA, others."""
    order = {"raw": 0, "ema": 1, "phema": 2, "bema": 3}.get(kind, 4)
    return (order, -decay if kind == "ema" and not math.isnan(decay) else 0.0, variant)


def seed_stats(values: dict[tuple[int, int], float]) -> tuple[float, float, str]:
    """(mean, std, over) of per-(training seed, sampling seed) values: over training seeds
    (each the mean of its sampling seeds) when there are several, else over sampling seeds;
    std NaN for one value."""
    values = {k: v for k, v in values.items() if not pd.isna(v)}
    if not values:
        return math.nan, math.nan, ""
    train: dict[int, list[float]] = {}
    for (seed, _), v in values.items():
        train.setdefault(seed, []).append(v)
    if len(train) >= 2:
        means = np.array([np.mean(v) for v in train.values()])
        return float(means.mean()), float(means.std(ddof=1)), "training seeds"
    x = np.array(list(values.values()))
    if len(x) >= 2:
        return float(x.mean()), float(x.std(ddof=1)), "sampling seeds"
    return float(x[0]), math.nan, ""


def _units(part: pd.DataFrame, column: str) -> dict[tuple[int, int], float]:
    return {(int(s), int(q)): float(v)
            for s, q, v in zip(part["seed"], part["sample_seed"], part[column], strict=True)}


def _boots(part: pd.DataFrame) -> dict[tuple[int, int], tuple]:
    """(training seed, sampling seed) -> (bootstrap seed, replicates) where a row has them."""
    out = {}
    for s, q, b, text in zip(part["seed"], part["sample_seed"], part["boot_seed"],
                             part["fid_boot"], strict=True):
        reps = parse_replicates(text)
        if reps:
            out[(int(s), int(q))] = (b, np.array(reps))
    return out


def _summary_row(part: pd.DataFrame) -> dict:
    units = _units(part, "fid")
    mean, std, over = seed_stats(units)
    row = {"mean": mean, "std": std, "n": len(units), "std_over": over,
           "seeds": tuple(sorted({int(v) for v in part["seed"]})),
           "sample_seeds": tuple(sorted({int(v) for v in part["sample_seed"]})),
           "share_low": bool(part["ema_share_low"].any()),
           "share_min": part["ema_share"].min(), "lag_epochs": part["lag_epochs"].mean(),
           "num_real": part["num_real"].iloc[0], "units": units, "boots": _boots(part)}
    for metric, *_ in OTHER_METRICS:
        values = {k: v for k, v in _units(part, metric).items() if not math.isnan(v)}
        m, sd, _ = seed_stats(values)
        row.update({f"{metric}_mean": m, f"{metric}_std": sd, f"{metric}_n": len(values)})
    return row


def summarize(fid: pd.DataFrame) -> pd.DataFrame:
    """Seed statistics per (protocol, series, weight set, epoch) of a ``dedupe_networks``
    frame: FID mean, std and n (`seed_stats`; `std_over` says over which seeds), seeds
    (training) and sample_seeds, share_low (any seed's EMA was mostly initial weights),
    share_min, lag_epochs, the same for kid / precision / recall (``<metric>_mean``,
    ``_std``, ``_n``), and the per-seed values (``units``) and bootstrap replicates
    (``boots``) the paired differences need. Sorted by series, weight set and epoch."""
    if fid.empty:
        return pd.DataFrame(columns=SUMMARY_KEYS + ["mean", "std", "n", "seeds", "share_low"])
    rows = [{**dict(zip(SUMMARY_KEYS, key, strict=True)), **_summary_row(part)}
            for key, part in fid.groupby(SUMMARY_KEYS, dropna=False, sort=False)]
    summary = pd.DataFrame(rows)
    summary["epoch"] = summary["epoch"].astype(int)
    rank = summary.apply(
        lambda r: (series_rank(r["series"]), variant_rank(r["kind"], r["decay"], r["variant"])),
        axis=1,
    )
    order = sorted(summary.index, key=lambda i: (rank[i], summary.at[i, "epoch"]))
    return summary.loc[order].reset_index(drop=True)


def variants(summary: pd.DataFrame) -> list[str]:
    """The averaged weight sets (EMA decays, post-hoc EMAs) present, in table order."""
    return [v for v in summary["variant"].drop_duplicates() if v != "raw"]


def fmt_count(row: pd.Series) -> str:
    """"n=3", or "n=3×5" for 3 training seeds x 5 sampling seeds."""
    train, sample = len(row["seeds"]), len(row["sample_seeds"])
    return f"n={train}×{sample}" if train > 1 and sample > 1 else f"n={row['n']}"


def fmt_fid(mean: float, std: float, n: int, count: str = "", decimals: int = 2) -> str:
    """"33.07 ± 0.10 (n=3)" over several seeds, "33.07" for one."""
    if n > 1 and not math.isnan(std):
        return f"{mean:.{decimals}f} ± {std:.{decimals}f}" + (f" ({count})" if count else "")
    return f"{mean:.{decimals}f}"


def spread_decimals(std: float) -> int:
    """2 decimals, more (up to 4) for a std below 0.05, so that it does not read 0.00."""
    if pd.isna(std) or std <= 0 or std >= 0.05:
        return 2
    return max(2, min(4, 1 - math.floor(math.log10(std))))


def fid_cell(row: pd.Series | None, with_epoch: bool = False) -> str:
    """A summary row's FID as a table cell: "27.90 ± 0.10 (n=3) @ 400ep †"; "n/a" for None."""
    if row is None:
        return NOT_AVAILABLE
    text = fmt_fid(row["mean"], row["std"], row["n"], fmt_count(row),
                   decimals=spread_decimals(row["std"]) if row["n"] > 1 else 2)
    text += f" @ {row.name}ep" if with_epoch else ""
    return text + (f" {LOW_MARK}" if row["share_low"] else "")


def paired(raw: pd.Series | None, ema: pd.Series | None) -> Interval | None:
    """EMA - raw, paired per (training seed, sampling seed) both rows have, with its interval;
    the bootstrap pairs replicates only when both rows drew them with the same seed."""
    if raw is None or ema is None:
        return None
    common = sorted(set(raw["units"]) & set(ema["units"]))
    diffs = {u: ema["units"][u] - raw["units"][u] for u in common}
    boots = {}
    for u in common:
        a, b = raw["boots"].get(u), ema["boots"].get(u)
        if a is not None and b is not None and a[0] == b[0] and len(a[1]) == len(b[1]):
            boots[u] = b[1] - a[1]
    return paired_interval(diffs, boots)


def gain_decimals(gain: Interval) -> int:
    """2 decimals, more (up to 4) when the interval is narrower than 0.1, so that its two ends
    differ on the page (smoke-size FIDs are below 1)."""
    width = gain.hi - gain.lo if gain.has_interval else 0.0
    if width <= 1e-9 * max(1.0, abs(gain.estimate)):  # no width but float rounding
        return 2
    return max(2, min(4, 1 - math.floor(math.log10(width))))


def fmt_gain(gain: Interval | None) -> str:
    """"-5.17 [-5.40, -4.94] *" (star: the interval excludes 0); "+1.20" without interval."""
    if gain is None:
        return NOT_AVAILABLE
    d = gain_decimals(gain)
    text = f"{gain.estimate:+.{d}f}"
    if gain.has_interval:
        text += f" [{gain.lo:+.{d}f}, {gain.hi:+.{d}f}]"
        text += f" {SIGNIFICANT_MARK}" if gain.significant else ""
    return text


def _best(by_epoch: pd.DataFrame) -> pd.Series | None:
    return None if by_epoch.empty else by_epoch.loc[by_epoch["mean"].idxmin()]


@dataclass
class SeriesResult:
    """What the report says about one series and one averaged weight set."""

    best_raw: pd.Series | None
    best_ema: pd.Series | None
    final: int
    last_raw: pd.Series | None
    last_ema: pd.Series | None
    best_gain: Interval | None
    final_gain: Interval | None


def results_table(summary: pd.DataFrame, variant: str) -> pd.DataFrame:
    """The "expected results" table of one protocol for one averaged weight set.

    Rows "<series> best" and "<series> @ final epoch" for every series present; columns
    "Without EMA" (raw), "With EMA" (``variant``) and "EMA - raw" (paired, with its 95%
    interval; at "best", each weight set at its own best epoch, paired by seed). The final
    epoch of a series is its last evaluated one, raw or ``variant``; a cell with nothing at
    that epoch reads "n/a". ``attrs["final_epochs"]`` maps series to that epoch,
    ``attrs["results"]`` series to their `SeriesResult`.
    """
    rows, final_epochs, results = {}, {}, {}
    for series, part in summary.groupby("series", sort=False):
        raw = part[part["variant"] == "raw"].set_index("epoch")
        ema = part[part["variant"] == variant].set_index("epoch")
        if raw.empty and ema.empty:
            continue
        final = int(max(raw.index.union(ema.index)))
        final_epochs[series] = final
        best_raw, best_ema = _best(raw), _best(ema)
        last_raw = raw.loc[final] if final in raw.index else None
        last_ema = ema.loc[final] if final in ema.index else None
        result = SeriesResult(best_raw, best_ema, final, last_raw, last_ema,
                              paired(best_raw, best_ema), paired(last_raw, last_ema))
        results[series] = result
        rows[f"{series} best"] = [
            fid_cell(best_raw, with_epoch=True), fid_cell(best_ema, with_epoch=True),
            fmt_gain(result.best_gain),
        ]
        rows[f"{series} @ final epoch"] = [
            fid_cell(last_raw), fid_cell(last_ema), fmt_gain(result.final_gain),
        ]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=RESULT_COLUMNS)
    table.index.name = "Model"
    table.attrs["final_epochs"] = final_epochs
    table.attrs["results"] = results
    return table


def _metric_cell(row: pd.Series, metric: str, scale: float, decimals: int) -> str:
    mean = row[f"{metric}_mean"]
    if pd.isna(mean):
        return ""
    return fmt_fid(mean * scale, row[f"{metric}_std"] * scale, row[f"{metric}_n"],
                   decimals=decimals)


def epoch_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Metrics by epoch: one row per epoch; one FID column per series and weight set (raw
    columns first, then each averaged weight set), like the STUDY.md table, then, where
    measured, "<series> <weights> KID×10³", "... precision" and "... recall" columns. Cells
    "mean ± std (n=k)" over seeds. Empty = not evaluated."""
    columns = {}
    order = ["raw"] + variants(summary)
    for variant in order:
        for series, part in summary[summary["variant"] == variant].groupby("series", sort=False):
            columns[f"{series} {variant}"] = {row["epoch"]: fid_cell(row)
                                              for _, row in part.iterrows()}
    for metric, label, scale, decimals in OTHER_METRICS:
        if f"{metric}_mean" not in summary or summary[f"{metric}_mean"].isna().all():
            continue
        for variant in order:
            rows = summary[summary["variant"] == variant]
            for series, part in rows.groupby("series", sort=False):
                cells = {row["epoch"]: _metric_cell(row, metric, scale, decimals)
                         for _, row in part.iterrows()}
                if any(cells.values()):
                    columns[f"{series} {variant} {label}"] = cells
    table = pd.DataFrame(columns).sort_index().fillna("")
    table.index.name = "epoch"
    return table


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' own needs the tabulate package)."""
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|:---|" + "---:|" * len(table.columns),
    ]
    for index, row in table.iterrows():
        lines.append("| " + " | ".join([str(index)] + [str(v) for v in row]) + " |")
    return "\n".join(lines)


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def latex_by_hand(table: pd.DataFrame) -> str:
    """A booktabs tabular without pandas' jinja2-based ``to_latex``."""
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = [
        r"\begin{tabular}{l" + "r" * len(table.columns) + "}",
        r"\toprule",
        " & ".join(_latex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    for index, row in table.iterrows():
        lines.append(" & ".join(_latex_escape(v) for v in [index, *row]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def to_latex(table: pd.DataFrame) -> str:
    """LaTeX (booktabs) of a table; ±, † and σ become math symbols."""
    try:
        import jinja2  # noqa: F401  (pandas' to_latex renders through jinja2)
    except ImportError:
        text = latex_by_hand(table)
    else:
        # Index as a plain first column: pandas would put its name on a row of its own.
        text = table.reset_index().to_latex(
            index=False, escape=True, column_format="l" + "r" * len(table.columns)
        )
    for symbol, latex in _LATEX_SYMBOLS.items():
        text = text.replace(symbol, latex)
    return text


def write_table(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Write ``<stem>.md``, ``.csv`` and ``.tex``; returns their paths."""
    # Not Path.with_suffix: a stem like "results_ema0.9999" already holds a dot.
    md, csv, tex = (stem.parent / f"{stem.name}.{ext}" for ext in ("md", "csv", "tex"))
    md.write_text(to_markdown(table) + "\n")
    table.to_csv(csv)
    tex.write_text(to_latex(table))
    return [md, csv, tex]
