"""One FID protocol's section of the report, as Markdown lines: the answer and its evidence.

It opens with the answer: one or two verdict sentences per model, the results table (the
report's first table) and the FID-against-epoch figure; then BEMA and the lag, the EMA-length
table and figures, the metrics by epoch, precision and recall, memorisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..figures.fid import fid_figure, prc_figure
from ..figures.overfitting import memorization_figure
from ..load import Study
from ..stats.lengths import best_variants, has_several_lengths
from ..stats.overfitting import memorization_summary
from ..stats.seeds import variants
from ..tables.cells import GAIN_COLUMN, LOW_MARK, SIGNIFICANT_MARK, seeds_text
from ..tables.formats import to_markdown
from ..tables.results import epoch_table, results_table
from .files import figure_links, file_links, print_table, results_stem, save_figure, write_table
from .lag import lag_section
from .lengths import length_section
from .verdicts import best_length, plateau, significance

SPLIT_NOTE = (
    "FID moves with the feature extractor, the number of images and the number of sampling "
    "steps (STUDY.md: 15+ points between 10k and 15.8k samples), so rows made under different "
    "protocols are never put in one table: each protocol has its own section. Do not compare "
    "numbers across sections."
)
_OTHER_SUFFIXES = (" KID×10³", " precision", " recall")


def _footnotes(table: pd.DataFrame, summary: pd.DataFrame, variant: str | None) -> list[str]:
    """What changes how a cell of the results table reads, beside the table: seeds that
    differ between the columns, an EMA still mostly its initial weights, raw FID still
    falling at the last epoch."""
    notes = []
    for series, part in summary.groupby("series", sort=False):
        raw = seeds_text(part.loc[part["variant"] == "raw", "seeds"])
        ema = seeds_text(part.loc[part["variant"] == variant, "seeds"])
        if raw and ema and raw != ema:
            notes.append(f"{series}: Without EMA averages seeds {raw}, With EMA seeds {ema}: "
                         f"{GAIN_COLUMN} pairs only the seeds both have.")
    if table.apply(lambda col: col.str.contains(LOW_MARK)).any().any():
        notes.append(f"{LOW_MARK} EMA still mostly initial weights (post-init share < 0.5) "
                     "in at least one seed: that FID reflects the initialisation, not training.")
    if variant is not None:
        for series, result in table.attrs.get("results", {}).items():
            note = plateau(series, variant, result)
            notes += [note] if note else []
    return [f"- {n}" for n in notes] + ([""] if notes else [])


def _reading_notes(table: pd.DataFrame) -> list[str]:
    """How to read the results table (after its figure: the first screen is for the answer)."""
    finals = ", ".join(f"{s} {e}" for s, e in table.attrs["final_epochs"].items())
    return [
        "- Results table: Best = the epoch whose seed-mean FID is lowest; ± = std over seeds, "
        "n = seeds (n=a×b: a training x b sampling seeds); "
        f"{GAIN_COLUMN} = With - Without EMA, paired per (checkpoint, seed) and averaged, from "
        "unrounded values (negative: EMA better), with its 95% interval; "
        f"{SIGNIFICANT_MARK} = the interval excludes 0. At \"best\" each weight set is at its "
        "own best epoch (paired by seed; the choice of the best epochs is not accounted for).",
        f"- Final epoch (last evaluated): {finals}.",
        "",
    ]


def _shown_variants(summary: pd.DataFrame, best: dict[str, str]) -> list[str]:
    """The FID-against-epoch figure's panels: the results table's weight set (the first),
    every fixed decay (what the study trained) and each series' lowest-FID length; the whole
    sweep is the FID-against-length figure's."""
    names = variants(summary)
    fixed = set(summary.loc[summary["kind"] == "ema", "variant"])
    return [v for i, v in enumerate(names) if i == 0 or v in fixed or v in best.values()]


def _verdict_lines(summary: pd.DataFrame, results: dict, primary: str | None,
                   best: dict[str, str]) -> list[str]:
    """Per series: is ``primary`` better than raw, and (with several lengths) which averaged
    weight set is best. ``results``: variant -> series -> SeriesResult."""
    sentences = []
    for series in summary["series"].drop_duplicates():
        r = results.get(primary, {}).get(series)
        if r is not None:
            sentences.append(significance(series, primary, r))
        if series in best:
            count = sum(series in by_series for by_series in results.values())
            sentences.append(best_length(series, best[series],
                                         results[best[series]][series], count,
                                         primary, r))
    if not sentences:
        return ["No averaged weight set evaluated: raw FID only (see Missing).", ""]
    return [f"- {s}" for s in sentences] + [""]


def results_section(study: Study, summary: pd.DataFrame, protocol: str, out: Path,
                    folder: Path, formats: Sequence[str], several: bool,
                    fid_scale: str = "auto") -> list[str]:
    """One protocol's results, written under ``folder``: the verdict, the results table (the
    first averaged weight set against raw: the study's fixed decay), the FID figure, then the
    EMA-length, by-epoch, precision-recall and memorisation parts."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"## Results: {protocol}" if several else "## Results", ""]
    lines += [f"> {SPLIT_NOTE}", ""] if several else []
    names = variants(summary)
    primary = names[0] if names else None
    tables = {v: results_table(summary, v) for v in names}
    results = {v: t.attrs["results"] for v, t in tables.items()}
    lengths = has_several_lengths(summary)
    best = best_variants(results) if lengths else {}

    lines += _verdict_lines(summary, results, primary, best)
    table = tables[primary] if primary else results_table(summary, None)
    files = write_table(table, folder / results_stem(summary, primary))
    title = f"Results: {primary}" if primary else "Results (no EMA rows)"
    print_table(f"{title} [{protocol}]", table)
    lines += [f"### {title}", "", to_markdown(table), ""]
    lines += _footnotes(table, summary, primary)
    shown = _shown_variants(summary, best)
    panels = summary[summary["variant"].isin(["raw", *shown])]
    figure = save_figure(fid_figure(panels, "FID vs epoch", fid_scale), folder / "fid_vs_epoch",
                         formats)
    caption = "FID vs epoch (raw solid, EMA dashed, ± std over seeds)"
    if len(shown) < len(names):
        caption += "; panels: the fixed decay and the lowest-FID length (all: EMA length below)"
    lines += figure_links(figure, out, caption)
    lines += _reading_notes(table)
    lines += [file_links(files, out), ""]

    lines += lag_section(summary, protocol, out, folder, formats, fid_scale)
    lines += length_section(study, summary, protocol, out, folder, formats, fid_scale,
                            tables, primary)
    lines += _by_epoch_section(summary, protocol, out, folder)
    lines += _prc_section(summary, out, folder, formats)
    lines += _memorization_lines(study, protocol, out, folder, formats)
    return lines


def _by_epoch_section(summary: pd.DataFrame, protocol: str, out: Path,
                      folder: Path) -> list[str]:
    """FID by epoch (every weight set), then KID, precision and recall by epoch."""
    by_epoch = epoch_table(summary)
    files = write_table(by_epoch, folder / "fid_by_epoch")
    print_table(f"Metrics by epoch [{protocol}]", by_epoch)
    summary.drop(columns=["units", "boots"]).assign(
        seeds=summary["seeds"].map(seeds_text), sample_seeds=summary["sample_seeds"].map(seeds_text)
    ).to_csv(folder / "fid_summary.csv", index=False)
    fid_columns = [c for c in by_epoch.columns if not c.endswith(_OTHER_SUFFIXES)]
    lines = ["### FID by epoch", "", to_markdown(by_epoch[fid_columns]), ""]
    if by_epoch.apply(lambda col: col.astype(str).str.contains(LOW_MARK)).any().any():
        lines += [f"{LOW_MARK} EMA still mostly its initial weights at that epoch (post-init "
                  "share 1 - decay^steps below 0.5, in at least one seed): that FID reflects "
                  "the initialisation more than training (see Warnings).", ""]
    if len(fid_columns) < len(by_epoch.columns):
        lines += ["### KID, precision and recall by epoch", "",
                  "KID: like FID, lower is better. Precision: share of generated images that "
                  "fall among real ones (fidelity); recall: share of real images that fall "
                  "among generated ones (diversity); higher is better for both. A longer EMA "
                  "is reported to trade recall for precision.", ""]
        for suffix in _OTHER_SUFFIXES:
            names = {c: c.removesuffix(suffix) for c in by_epoch.columns if c.endswith(suffix)}
            if not names:
                continue
            part = by_epoch[list(names)].rename(columns=names)
            lines += [f"**{suffix.strip()}**", "", to_markdown(part), ""]
    return lines + [file_links(files + [folder / "fid_summary.csv"], out), ""]


def _prc_section(summary: pd.DataFrame, out: Path, folder: Path,
                 formats: Sequence[str]) -> list[str]:
    figure = save_figure(prc_figure(summary, "Precision and recall vs epoch"),
                         folder / "prc_vs_epoch", formats)
    return figure_links(figure, out, "Precision and recall vs epoch (raw solid, EMA dashed)")


def _memorization_lines(study: Study, protocol: str, out: Path, folder: Path,
                        formats: Sequence[str]) -> list[str]:
    memo = memorization_summary(study.fid)
    memo = memo[memo["protocol"] == protocol] if not memo.empty else memo
    figure = save_figure(memorization_figure(memo, "Memorisation vs epoch"),
                         folder / "memorization_vs_epoch", formats)
    lines = ["### Memorisation", ""]
    if not figure:
        return lines + ["No memorisation rate measured (eval.metrics without memorization).",
                        ""]
    return lines + figure_links(figure, out, "Memorisation rate vs epoch (raw solid, each "
                                "averaged weight set its own line style)")
