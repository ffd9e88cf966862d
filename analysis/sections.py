"""The report's body, as Markdown lines: per FID protocol the answer and its evidence, then
training. analysis/report.py puts them in order; analysis/appendix.py writes the closing
sections.

A protocol's section opens with the answer (issue 22): one or two verdict sentences per
model, the results table (the report's first table) and the FID-against-epoch figure; then
the EMA-length table and figures, the metrics by epoch, precision and recall, memorisation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from . import ema_length as length
from . import lag, verdict
from .figures import ema_figure, fid_figure, prc_figure, save_figure, training_figure
from .header import seeds_text
from .load import Study, ema_diagnostics
from .overfitting import heldout_figure, heldout_frame, memorization_figure, memorization_summary
from .tables import (
    GAIN_COLUMN,
    LOW_MARK,
    SIGNIFICANT_MARK,
    epoch_table,
    results_table,
    to_markdown,
    variants,
    write_table,
)

SPLIT_NOTE = (
    "FID moves with the feature extractor, the number of images and the number of sampling "
    "steps (STUDY.md: 15+ points between 10k and 15.8k samples), so rows made under different "
    "protocols are never put in one table: each protocol has its own section. Do not compare "
    "numbers across sections."
)
_OTHER_SUFFIXES = (" KID×10³", " precision", " recall")


def slug(text: str) -> str:
    """A file-name-safe form of a label ("EMA 0.9999" -> "ema-0.9999")."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def figure_links(paths: Sequence[Path], out: Path, caption: str) -> list[str]:
    """Embed the first bitmap/vector image Markdown viewers show; link every file."""
    if not paths:
        return []
    rel = [p.relative_to(out).as_posix() for p in paths]
    shown = next((r for r in rel if r.rsplit(".", 1)[-1] in ("png", "svg", "jpg")), None)
    lines = [f"![{caption}]({shown})", ""] if shown else []
    return lines + [f"{caption}: " + ", ".join(f"[{r.rsplit('.', 1)[-1]}]({r})" for r in rel), ""]


def file_links(paths: Sequence[Path], out: Path) -> str:
    return "Files: " + ", ".join(f"[{p.name}]({p.relative_to(out).as_posix()})" for p in paths)


def _save(fig: Figure | None, stem: Path, formats: Sequence[str]) -> list[Path]:
    return [] if fig is None else save_figure(fig, stem, formats)


def _print_table(title: str, table: pd.DataFrame) -> None:
    print(f"\n{title}\n{to_markdown(table)}")


def _stem(summary: pd.DataFrame, variant: str | None) -> str:
    """results_<weights id> ("results_ema0.9999"), results_raw without an averaged set."""
    if variant is None:
        return "results_raw"
    weights_id = summary.loc[summary["variant"] == variant, "weights_id"].iloc[0]
    return "results_" + weights_id.replace("@", "")


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
            note = verdict.plateau(series, variant, result)
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
            sentences.append(verdict.significance(series, primary, r))
        if series in best:
            count = sum(series in by_series for by_series in results.values())
            sentences.append(verdict.best_length(series, best[series],
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
    lengths = length.has_several_lengths(summary)
    best = length.best_variants(results) if lengths else {}

    lines += _verdict_lines(summary, results, primary, best)
    table = tables[primary] if primary else results_table(summary, None)
    files = write_table(table, folder / _stem(summary, primary))
    title = f"Results: {primary}" if primary else "Results (no EMA rows)"
    _print_table(f"{title} [{protocol}]", table)
    lines += [f"### {title}", "", to_markdown(table), ""]
    lines += _footnotes(table, summary, primary)
    shown = _shown_variants(summary, best)
    panels = summary[summary["variant"].isin(["raw", *shown])]
    figure = _save(fid_figure(panels, "FID vs epoch", fid_scale), folder / "fid_vs_epoch",
                   formats)
    caption = "FID vs epoch (raw solid, EMA dashed, ± std over seeds)"
    if len(shown) < len(names):
        caption += "; panels: the fixed decay and the lowest-FID length (all: EMA length below)"
    lines += figure_links(figure, out, caption)
    lines += _reading_notes(table)
    lines += [file_links(files, out), ""]

    lines += _lag_section(summary, protocol, out, folder, formats, fid_scale)
    lines += _length_section(study, summary, protocol, out, folder, formats, fid_scale,
                             tables, primary)
    lines += _by_epoch_section(summary, protocol, out, folder)
    lines += _prc_section(summary, out, folder, formats)
    lines += _memorization_lines(study, protocol, out, folder, formats)
    return lines


def _lag_section(summary: pd.DataFrame, protocol: str, out: Path, folder: Path,
                 formats: Sequence[str], fid_scale: str) -> list[str]:
    """"Does BEMA remove the lag?": the early epochs and the final one, BEMA against the
    longest exponential EMA and against raw, paired; [] without a BEMA."""
    table = lag.lag_table(summary)
    if table is None:
        return []
    files = write_table(table, folder / "bema_lag")
    _print_table(f"BEMA and the lag [{protocol}]", table)
    lines = ["### BEMA and the EMA's lag", "",
             "BEMA (Block & Zhang 2025) adds a bias correction alpha_t (theta - theta0) to an "
             "EMA whose decay grows with the step, to keep the averaging without the lag. "
             "Differences paired per (checkpoint, sampling seed), 95% interval, "
             f"{SIGNIFICANT_MARK} when it excludes 0; negative = BEMA better.", ""]
    lines += [f"- {s}" for s in lag.lag_verdicts(table)] + [""]
    lines += [to_markdown(table), ""]
    figure = _save(lag.lag_figure(summary, "BEMA vs EMA vs raw", fid_scale),
                   folder / "bema_lag", formats)
    lines += figure_links(figure, out, "FID vs epoch: raw (solid black), the EMAs (dashed, "
                          "dotted), BEMA (thick), ± std over seeds")
    return lines + [file_links(files, out), ""]


def _by_epoch_section(summary: pd.DataFrame, protocol: str, out: Path,
                      folder: Path) -> list[str]:
    """FID by epoch (every weight set), then KID, precision and recall by epoch."""
    by_epoch = epoch_table(summary)
    files = write_table(by_epoch, folder / "fid_by_epoch")
    _print_table(f"Metrics by epoch [{protocol}]", by_epoch)
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
    figure = _save(prc_figure(summary, "Precision and recall vs epoch"),
                   folder / "prc_vs_epoch", formats)
    return figure_links(figure, out, "Precision and recall vs epoch (raw solid, EMA dashed)")


def _length_section(study: Study, summary: pd.DataFrame, protocol: str, out: Path,
                    folder: Path, formats: Sequence[str], fid_scale: str,
                    tables: dict[str, pd.DataFrame], primary: str | None) -> list[str]:
    """"Which EMA length?": one table of every weight set, FID against EMA length, the best
    length per epoch; [] unless the rows hold more than one averaged weight set. ``tables``:
    the results table of every averaged weight set; the fixed decays besides ``primary`` (the
    results table's) keep their own table files and sentences, while a post-hoc sweep is
    only this one table."""
    if not length.has_several_lengths(summary):
        return []
    lengths = length.mark_tracked(length.length_summary(summary, study.fid), study.runs)
    results = {v: t.attrs["results"] for v, t in tables.items()}
    lines = ["### EMA length", "",
             "Every averaged weight set on one axis, its EMA length σrel (relative std of its "
             "averaging profile; for a fixed decay it shrinks as training goes on, so the "
             "table gives it at the final epoch).", ""]
    table = length.length_results(summary, lengths, results)
    files = write_table(table, folder / "results_by_length")
    _print_table(f"EMA length [{protocol}]", table)
    lines += [to_markdown(table), ""]
    notes = [f"{length.BEST_MARK} = the lowest FID at its best epoch among a model's averaged "
             "weight sets: picked after looking, which its interval does not account for. "
             f"{GAIN_COLUMN} as in the results table, against raw at its best and final epoch."]
    fixed = set(summary.loc[summary["kind"] == "ema", "variant"])
    for variant, other in tables.items():
        if variant == primary or variant not in fixed:
            continue
        files += write_table(other, folder / _stem(summary, variant))
        _print_table(f"Results: {variant} [{protocol}]", other)
        notes += [verdict.significance(series, variant, r)
                  for series, r in results[variant].items()]
    lines += [f"- {n}" for n in notes] + ["", file_links(files, out), ""]
    figure = _save(length.fid_length_figure(lengths, "FID vs EMA length", fid_scale),
                   folder / "fid_vs_ema_length", formats)
    lines += figure_links(figure, out, "FID vs EMA length σrel (raw at the left edge, best "
                          "length starred, fixed decay dotted)")
    figure = _save(length.best_length_figure(length.best_lengths(lengths)),
                   folder / "best_ema_length", formats)
    lines += figure_links(figure, out, "Best EMA length vs epoch")
    by_epoch = length.length_table(lengths)
    if not by_epoch.empty:
        files = write_table(by_epoch, folder / "ema_length")
        _print_table(f"Best EMA length by epoch [{protocol}]", by_epoch)
        lines += ["Best = the lowest seed-mean FID among the averaged weight sets of that "
                  "epoch:", "", to_markdown(by_epoch), "", file_links(files, out), ""]
    return lines


def _memorization_lines(study: Study, protocol: str, out: Path, folder: Path,
                        formats: Sequence[str]) -> list[str]:
    memo = memorization_summary(study.fid)
    memo = memo[memo["protocol"] == protocol] if not memo.empty else memo
    figure = _save(memorization_figure(memo, "Memorisation vs epoch"),
                   folder / "memorization_vs_epoch", formats)
    lines = ["### Memorisation", ""]
    if not figure:
        return lines + ["No memorisation rate measured (eval.metrics without memorization).",
                        ""]
    return lines + figure_links(figure, out, "Memorisation rate vs epoch (raw solid, each "
                                "averaged weight set its own line style)")


def training_section(study: Study, out: Path, formats: Sequence[str]) -> list[str]:
    """Training loss, EMA diagnostics and held-out loss figures."""
    lines = ["## Training", ""]
    loss = _save(training_figure(study.metrics), out / "training_loss", formats)
    lines += figure_links(loss, out, "Training loss vs epoch (one panel per model: "
                          "LIFT's loss sums its two scales, not comparable with Baseline's)")
    diagnostics = ema_diagnostics(study.metrics) if not study.metrics.empty else pd.DataFrame()
    ema = _save(ema_figure(diagnostics), out / "ema_diagnostics", formats)
    lines += figure_links(ema, out, "EMA diagnostics vs epoch")
    if not loss and not ema:
        lines += ["No training metrics yet: see Missing.", ""]
    held = heldout_frame(study.metrics) if not study.metrics.empty else pd.DataFrame()
    lines += ["### Held-out loss", ""]
    figure = _save(heldout_figure(held), out / "heldout_loss", formats)
    lines += figure_links(figure, out, "Held-out (solid) and training (dashed) loss vs epoch, "
                          "per weight set, on fixed (image, t, noise) triples")
    if not figure:
        lines += ["No held-out loss in metrics.csv (loss_holdout): the runs had no held-out "
                  "images (data.holdout_num or data.holdout_root).", ""]
    return lines
