"""Tables of one FID protocol: the STUDY.md "expected results" table and FID by epoch.

Both are read from ``summarize`` (seed statistics per series, weight set and epoch) and are
written as Markdown, CSV and LaTeX. Cells: "mean ± std" over seeds (plain mean for one seed),
"@ 200ep" where the epoch was chosen (best = the epoch whose seed-mean is lowest), and a
dagger where an EMA was still mostly its initial weights when evaluated.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .load import series_rank

LOW_MARK = "†"  # EMA still mostly initial weights (ema_share_low) in at least one seed
NOT_AVAILABLE = "n/a"
RESULT_COLUMNS = ["Without EMA", "With EMA", "EMA gain"]
SUMMARY_KEYS = ["protocol", "model", "series", "kind", "decay", "weights_id", "variant", "epoch"]
_LATEX_SYMBOLS = {"±": r"$\pm$", LOW_MARK: r"$^\dagger$", "σ": r"$\sigma$"}
_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                   "^": r"\textasciicircum{}"}


def variant_rank(kind: str, decay: float, variant: str) -> tuple:
    """Sort key of weight sets: raw, then EMA by decreasing decay, post-hoc EMA, others."""
    order = {"raw": 0, "ema": 1, "phema": 2}.get(kind, 3)
    return (order, -decay if kind == "ema" and not math.isnan(decay) else 0.0, variant)


def summarize(fid: pd.DataFrame) -> pd.DataFrame:
    """Seed statistics per (protocol, series, weight set, epoch) of a ``dedupe_networks``
    frame: mean, std (ddof 1; NaN for one seed), n, seeds, share_low (any seed's EMA was
    mostly initial weights) and share_min. Sorted by series, weight set and epoch."""
    if fid.empty:
        return pd.DataFrame(columns=SUMMARY_KEYS + ["mean", "std", "n", "seeds", "share_low"])
    summary = (
        fid.groupby(SUMMARY_KEYS, dropna=False, sort=False)
        .agg(
            mean=("fid", "mean"),
            std=("fid", "std"),
            n=("fid", "size"),
            seeds=("seed", lambda s: tuple(sorted({int(v) for v in s}))),
            share_low=("ema_share_low", "any"),
            share_min=("ema_share", "min"),
        )
        .reset_index()
    )
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


def fmt_fid(mean: float, std: float, n: int) -> str:
    """"33.07 ± 0.10" over several seeds, "33.07" for one."""
    return f"{mean:.2f} ± {std:.2f}" if n > 1 and not math.isnan(std) else f"{mean:.2f}"


def _cell(row: pd.Series | None, with_epoch: bool = False) -> str:
    if row is None:
        return NOT_AVAILABLE
    text = fmt_fid(row["mean"], row["std"], row["n"])
    text += f" @ {row.name}ep" if with_epoch else ""
    return text + (f" {LOW_MARK}" if row["share_low"] else "")


def _gain(raw: pd.Series | None, ema: pd.Series | None) -> str:
    # Positive = EMA better; computed from the unrounded means.
    return NOT_AVAILABLE if raw is None or ema is None else f"{raw['mean'] - ema['mean']:+.2f}"


def _best(by_epoch: pd.DataFrame) -> pd.Series | None:
    return None if by_epoch.empty else by_epoch.loc[by_epoch["mean"].idxmin()]


def results_table(summary: pd.DataFrame, variant: str) -> pd.DataFrame:
    """The "expected results" table of one protocol for one averaged weight set.

    Rows "<series> best" and "<series> @ final epoch" for every series present; columns
    "Without EMA" (raw), "With EMA" (``variant``) and "EMA gain" (raw - EMA). The final
    epoch of a series is its last evaluated one, raw or ``variant``; a cell with nothing at
    that epoch reads "n/a". ``attrs["final_epochs"]`` maps series to that epoch.
    """
    rows, final_epochs = {}, {}
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
        rows[f"{series} best"] = [
            _cell(best_raw, with_epoch=True), _cell(best_ema, with_epoch=True),
            _gain(best_raw, best_ema),
        ]
        rows[f"{series} @ final epoch"] = [
            _cell(last_raw), _cell(last_ema), _gain(last_raw, last_ema),
        ]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=RESULT_COLUMNS)
    table.index.name = "Model"
    table.attrs["final_epochs"] = final_epochs
    return table


def epoch_table(summary: pd.DataFrame) -> pd.DataFrame:
    """FID by epoch: one row per epoch, one column per series and weight set (raw columns
    first, then each averaged weight set), like the STUDY.md table. Empty = not evaluated."""
    columns = {}
    for variant in ["raw"] + variants(summary):
        for series, part in summary[summary["variant"] == variant].groupby("series", sort=False):
            cells = {row["epoch"]: _cell(row) for _, row in part.iterrows()}
            columns[f"{series} {variant}"] = cells
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
