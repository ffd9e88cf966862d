"""Make a study's report (tables, figures, report.md) from its result files.

    python -m analysis.report study_dir=outputs/study/ema_vs_raw
    python -m analysis.report runs=[outputs/a,outputs/b] out=reports/today

``make_report`` is the plain function; ``main`` is a thin Hydra wrapper (conf/report.yaml).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from explore.core.errors import UserError

from . import ema_length as length
from .figures import (
    FID_SCALES,
    ema_figure,
    fid_figure,
    prc_figure,
    save_figure,
    training_figure,
)
from .header import protocol_header, runs_table, seeds_text
from .html import write_html
from .load import Study, dedupe_networks, ema_diagnostics, load_study
from .missing import find_missing, find_warnings
from .overfitting import heldout_figure, heldout_frame, memorization_figure, memorization_summary
from .samples import samples_section
from .stats import Interval
from .tables import (
    GAIN_COLUMN,
    LOW_MARK,
    SIGNIFICANT_MARK,
    SeriesResult,
    epoch_table,
    fmt_gain,
    results_table,
    summarize,
    to_markdown,
    variants,
    write_table,
)

# Named, not __name__: under `python -m` that is "__main__", outside conf/report.yaml's logger.
log = logging.getLogger("analysis.report")

REPORT_FILE = "report.md"
TITLE = "Baseline vs LIFT EMA study: report"
# formats= entries that are documents, not figure files: report.md is always written, "html"
# adds report.html (its figures embedded as PNG)
DOCUMENT_FORMATS = ("md", "html")
SPLIT_NOTE = (
    "FID moves with the feature extractor, the number of images and the number of sampling "
    "steps (STUDY.md: 15+ points between 10k and 15.8k samples), so rows made under different "
    "protocols are never put in one table: each protocol has its own section. Do not compare "
    "numbers across sections."
)


def _slug(text: str) -> str:
    """A file-name-safe form of a label ("EMA 0.9999" -> "ema-0.9999")."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


class FormatError(UserError, ValueError):
    """A format neither matplotlib can write nor a document format (md, html)."""


def _figure_links(paths: Sequence[Path], out: Path, caption: str) -> list[str]:
    """Embed the first bitmap/vector image Markdown viewers show; link every file."""
    if not paths:
        return []
    rel = [p.relative_to(out).as_posix() for p in paths]
    shown = next((r for r in rel if r.rsplit(".", 1)[-1] in ("png", "svg", "jpg")), None)
    lines = [f"![{caption}]({shown})", ""] if shown else []
    return lines + [f"{caption}: " + ", ".join(f"[{r.rsplit('.', 1)[-1]}]({r})" for r in rel), ""]


def _file_links(paths: Sequence[Path], out: Path) -> str:
    return "Files: " + ", ".join(f"[{p.name}]({p.relative_to(out).as_posix()})" for p in paths)


def _save(fig: Figure | None, stem: Path, formats: Sequence[str]) -> list[Path]:
    return [] if fig is None else save_figure(fig, stem, formats)


def _gain_text(gain: Interval | None) -> str:
    if gain is None:
        return "not measured for both"
    if not gain.has_interval:
        return fmt_gain(gain) + " (no interval: one seed and no bootstrap replicates)"
    verdict = ("significant, EMA better" if gain.significant and gain.estimate < 0 else
               "significant, EMA worse" if gain.significant else "not significant")
    return f"{fmt_gain(gain).rstrip(' ' + SIGNIFICANT_MARK)} ({gain.method}): {verdict}"


def _significance(series: str, variant: str, r: SeriesResult) -> str:
    """One sentence: is the EMA's effect significant at the best and at the final epoch?"""
    best = (f"the best epochs (raw {r.best_raw.name}, EMA {r.best_ema.name})"
            if r.best_raw is not None and r.best_ema is not None else "the best epochs")
    return (f"**{series}**: FID of {variant} minus raw at {best}: {_gain_text(r.best_gain)}; "
            f"at the final epoch {r.final}: {_gain_text(r.final_gain)}.")


def _plateau(series: str, variant: str, r: SeriesResult) -> str | None:
    """Raw FID still falling at the last evaluated epoch: say what that means for the EMA."""
    if r.best_raw is None or int(r.best_raw.name) != r.final:
        return None
    lag = r.last_ema["lag_epochs"] if r.last_ema is not None else float("nan")
    lag = f"{lag:.1f} epochs" if pd.notna(lag) else "an unknown number of epochs"
    return (f"{series}: raw FID is lowest at the last evaluated epoch ({r.final}): training has "
            f"not plateaued, so an EMA that trails the raw weights is expected to be worse; "
            f"{variant} lags them by {lag} (lag_epochs).")


def _results_notes(table: pd.DataFrame, summary: pd.DataFrame, variant: str | None) -> list[str]:
    finals = ", ".join(f"{s} {e}" for s, e in table.attrs["final_epochs"].items())
    notes = [
        "Best = the epoch whose seed-mean FID is lowest; ± = std over seeds, n = seeds "
        f"(n=a×b: a training x b sampling seeds); {GAIN_COLUMN} = With - Without EMA, paired "
        "per (checkpoint, seed) and averaged, from unrounded values (negative: EMA better), "
        f"with its 95% interval; {SIGNIFICANT_MARK} = the interval excludes 0. At \"best\" "
        "each weight set is at its own best epoch (paired by seed; the choice of the best "
        "epochs is not accounted for).",
        f"Final epoch (last evaluated): {finals}.",
    ]
    for series, part in summary.groupby("series", sort=False):
        raw = seeds_text(part.loc[part["variant"] == "raw", "seeds"])
        ema = seeds_text(part.loc[part["variant"] == variant, "seeds"])
        if raw and ema and raw != ema:
            notes.append(f"{series}: Without EMA averages seeds {raw}, With EMA seeds {ema}: "
                         f"{GAIN_COLUMN} pairs only the seeds both have.")
    if table.apply(lambda col: col.str.contains(LOW_MARK)).any().any():
        notes.append(f"{LOW_MARK} EMA still mostly initial weights (post-init share < 0.5) "
                     "in at least one seed: that FID reflects the initialisation, not training.")
    for series, result in table.attrs.get("results", {}).items():
        if variant is not None:
            notes.append(_significance(series, variant, result))
            plateau = _plateau(series, variant, result)
            notes += [plateau] if plateau else []
    return [f"- {n}" for n in notes] + [""]


def _print_table(title: str, table: pd.DataFrame) -> None:
    print(f"\n{title}\n{to_markdown(table)}")


def _protocol_section(
    study: Study, summary: pd.DataFrame, protocol: str, out: Path, folder: Path,
    formats: Sequence[str], several: bool, fid_scale: str = "auto",
) -> list[str]:
    """Tables and FID figure of one protocol, written under ``folder``; its report lines."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"## FID protocol: {protocol}", ""]
    lines += [f"> {SPLIT_NOTE}", ""] if several else []
    lines += protocol_header(study, protocol, summary)
    for variant in variants(summary) or [None]:
        title = f"Results: {variant}" if variant else "Results (no EMA rows)"
        table = results_table(summary, variant)
        weights_id = summary.loc[summary["variant"] == variant, "weights_id"]
        stem = "results_" + (weights_id.iloc[0].replace("@", "") if variant else "raw")
        files = write_table(table, folder / stem)
        _print_table(f"{title} [{protocol}]", table)
        lines += [f"### {title}", "", to_markdown(table), ""]
        lines += _results_notes(table, summary, variant)
        lines += [_file_links(files, out), ""]
    by_epoch = epoch_table(summary)
    files = write_table(by_epoch, folder / "fid_by_epoch")
    _print_table(f"Metrics by epoch [{protocol}]", by_epoch)
    summary.drop(columns=["units", "boots"]).assign(
        seeds=summary["seeds"].map(seeds_text), sample_seeds=summary["sample_seeds"].map(seeds_text)
    ).to_csv(folder / "fid_summary.csv", index=False)
    fid_columns = [c for c in by_epoch.columns if not c.endswith(_OTHER_SUFFIXES)]
    lines += ["### FID by epoch", "", to_markdown(by_epoch[fid_columns]), ""]
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
    lines += [_file_links(files + [folder / "fid_summary.csv"], out), ""]
    figure = _save(fid_figure(summary, f"FID vs epoch · {protocol}", fid_scale),
                   folder / "fid_vs_epoch", formats)
    lines += _figure_links(figure, out, "FID vs epoch (raw solid, EMA dashed, ± std over seeds)")
    figure = _save(prc_figure(summary, f"Precision and recall vs epoch · {protocol}"),
                   folder / "prc_vs_epoch", formats)
    lines += _figure_links(figure, out, "Precision and recall vs epoch (raw solid, EMA dashed)")
    lines += _memorization_lines(study, protocol, out, folder, formats)
    lines += _length_section(study, summary, protocol, out, folder, formats, fid_scale)
    return lines


_OTHER_SUFFIXES = (" KID×10³", " precision", " recall")


def _check_formats(formats: Sequence[str]) -> tuple[list[str], bool]:
    """(figure formats, write report.html?). ``md`` is accepted and means report.md, which is
    always written; ``html`` needs PNG figures to embed, so png is added when missing."""
    supported = Figure().canvas.get_supported_filetypes()
    unknown = [f for f in formats if f not in supported and f not in DOCUMENT_FORMATS]
    if unknown:
        raise FormatError(f"formats: unknown format(s) {unknown}; choose figure formats from "
                          f"{sorted(supported)} and/or documents {list(DOCUMENT_FORMATS)}")
    figures = [f for f in formats if f not in DOCUMENT_FORMATS]
    html = "html" in formats
    if html and "png" not in figures:
        figures.append("png")
    return figures, html


def _list_section(title: str, messages: list[str], empty: str) -> list[str]:
    return [f"## {title}", "", *([f"- {m}" for m in messages] or [empty]), ""]


def _training_section(study: Study, out: Path, formats: Sequence[str]) -> list[str]:
    """Training loss, EMA diagnostics and held-out loss figures."""
    lines = ["## Training", ""]
    loss = _save(training_figure(study.metrics), out / "training_loss", formats)
    lines += _figure_links(loss, out, "Training loss vs epoch (one panel per model: "
                           "LIFT's loss sums its two scales, not comparable with Baseline's)")
    diagnostics = ema_diagnostics(study.metrics) if not study.metrics.empty else pd.DataFrame()
    ema = _save(ema_figure(diagnostics), out / "ema_diagnostics", formats)
    lines += _figure_links(ema, out, "EMA diagnostics vs epoch")
    if not loss and not ema:
        lines += ["No training metrics yet: see Missing.", ""]
    held = heldout_frame(study.metrics) if not study.metrics.empty else pd.DataFrame()
    lines += ["### Held-out loss", ""]
    figure = _save(heldout_figure(held), out / "heldout_loss", formats)
    lines += _figure_links(figure, out, "Held-out and training loss vs epoch, per weight set")
    if not figure:
        lines += ["No held-out loss in metrics.csv (loss_holdout): the runs had no held-out "
                  "images (data.holdout_num or data.holdout_root).", ""]
    return lines


def _length_section(study: Study, summary: pd.DataFrame, protocol: str, out: Path,
                    folder: Path, formats: Sequence[str], fid_scale: str) -> list[str]:
    """FID against EMA length, the best length per epoch and its table; [] unless the rows
    hold more than one EMA length."""
    if not length.has_several_lengths(summary):
        return []
    lengths = length.mark_tracked(length.length_summary(summary, study.fid), study.runs)
    lines = ["### EMA length", "",
             "Every averaged weight set on one axis, its EMA length σrel (relative std of its "
             "averaging profile; for a fixed decay it shrinks as training goes on). Best = the "
             "lowest seed-mean FID among the averaged weight sets of that epoch.", ""]
    table = length.length_table(lengths)
    if not table.empty:
        files = write_table(table, folder / "ema_length")
        _print_table(f"EMA length [{protocol}]", table)
        lines += [to_markdown(table), "", _file_links(files, out), ""]
    figure = _save(length.fid_length_figure(lengths, f"FID vs EMA length · {protocol}",
                                            fid_scale), folder / "fid_vs_ema_length", formats)
    lines += _figure_links(figure, out, "FID vs EMA length σrel (raw at the left edge, best "
                           "length starred, fixed decay dotted)")
    figure = _save(length.best_length_figure(length.best_lengths(lengths)),
                   folder / "best_ema_length", formats)
    lines += _figure_links(figure, out, "Best EMA length vs epoch")
    return lines


def _memorization_lines(study: Study, protocol: str, out: Path, folder: Path,
                        formats: Sequence[str]) -> list[str]:
    memo = memorization_summary(study.fid)
    memo = memo[memo["protocol"] == protocol] if not memo.empty else memo
    figure = _save(memorization_figure(memo, f"Memorisation vs epoch · {protocol}"),
                   folder / "memorization_vs_epoch", formats)
    lines = ["### Memorisation", ""]
    if not figure:
        return lines + ["No memorisation rate measured (eval.metrics without memorization).",
                        ""]
    return lines + _figure_links(figure, out, "Memorisation rate vs epoch (raw solid, each "
                                 "averaged weight set its own line style)")


def make_report(
    study_dir: str | Path | None = None,
    runs: Iterable[str | Path] | None = None,
    out: str | Path | None = None,
    formats: Sequence[str] = ("png", "pdf"),
    fid_scale: str = "auto",
) -> Path:
    """Write tables, figures and report.md for the runs below ``study_dir`` and/or in
    ``runs``; returns the path of report.md.

    ``out`` defaults to ``<study_dir>/report``, or ``outputs/report`` with ``runs`` only.
    ``formats``: figure file types, plus ``html`` for a self-contained report.html (``md``:
    report.md, always written). ``fid_scale``: FID axes log, linear or auto (log when the
    plotted FIDs span more than 5x).
    Missing pieces are listed in report.md and logged as warnings; only finding no run at
    all is an error (NoRunsFoundError, naming the folders searched).
    """
    formats, html = _check_formats(formats)
    if fid_scale not in FID_SCALES:
        raise FormatError(f"fid_scale={fid_scale!r}: choose from {list(FID_SCALES)}")
    study = load_study(study_dir, runs)
    if out is None:
        out = Path(study_dir) / "report" if study_dir else Path("outputs/report")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    summary = summarize(dedupe_networks(study.fid))
    missing = find_missing(study, summary)
    for message in missing:
        log.warning("missing: %s", message)
    warnings = find_warnings(summary)
    for message in warnings:
        log.warning("warning: %s", message)

    protocols = list(summary["protocol"].drop_duplicates())
    several = len(protocols) > 1
    source = ", ".join(str(p) for p in ([study_dir] if study_dir else []) + list(runs or []))
    lines = [
        f"# {TITLE}", "",
        f"Made by `python -m analysis.report` from {len(study.runs)} runs in {source} "
        f"({int((study.runs['eval_rows'] > 0).sum())} evaluated).", "",
        "Every FID is read within its protocol (dataset, image size, number of images, "
        "sampling steps, extractor, real subset), stated at the head of its section.", "",
    ]
    if several:
        lines += [f"**{len(protocols)} FID protocols.** {SPLIT_NOTE}", ""]
    lines += ["## Runs", "", *runs_table(study.runs)]
    lines += _list_section("Missing", missing, "Nothing missing.")
    lines += _list_section("Warnings", warnings, "No warnings.")
    for protocol in protocols:
        folder = out / _slug(protocol) if several else out
        part = summary[summary["protocol"] == protocol]
        lines += _protocol_section(study, part, protocol, out, folder, formats, several,
                                   fid_scale)
    if not protocols:
        lines += ["## FID", "", "No FID rows yet: see Missing.", ""]
    lines += _training_section(study, out, formats)
    lines += samples_section(study, out)

    report = out / REPORT_FILE
    report.write_text("\n".join(lines))
    if html:
        log.info("report: %s", write_html(lines, out, TITLE))
    return report


def _run(cfg: DictConfig) -> None:
    """CLI: ``python -m analysis.report study_dir=... | runs=[...] [out=...]``."""
    runs = cfg.runs
    # runs=outputs/a (one folder, no brackets) arrives as a string, not a list.
    runs = [runs] if isinstance(runs, str) else OmegaConf.to_container(runs) if runs else None
    report = make_report(cfg.study_dir, runs, cfg.out, tuple(cfg.formats),
                         fid_scale=cfg.get("fid_scale", "auto"))
    log.info("report: %s", report)


if __name__ == "__main__":
    from explore.cli import hydra_entry

    hydra_entry("report", _run, logger="analysis.report")()
