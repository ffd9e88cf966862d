"""Make a study's report (tables, figures, report.md) from its result files.

    python -m analysis.report study_dir=outputs/study/ema_vs_raw
    python -m analysis.report runs=[outputs/a,outputs/b] out=reports/today

``make_report`` is the plain function; ``main`` is a thin Hydra wrapper (conf/report.yaml).

The report's outline, the answer first: the title; per FID protocol the verdict sentences,
the results table (the report's first table), the FID-against-epoch figure and the rest of the
evidence (analysis/sections/results.py); training; samples; then what every number was made
with, the runs, missing pieces and warnings (analysis/sections/appendix.py). The pipeline
behind it: load -> stats -> tables and figures -> sections -> report.md and report.html (page).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from explore.core.errors import UserError

from .figures.style import FID_SCALES
from .load import Study, dedupe_networks, load_study
from .page.html import write_html
from .sections.agreement import agreement_section
from .sections.appendix import Appendix, appendix_lines
from .sections.files import slug
from .sections.results import SPLIT_NOTE, results_section
from .sections.samples import samples_section
from .sections.training import training_section
from .stats.coverage import find_missing, find_warnings, mixed_environment_warnings
from .stats.seeds import summarize

# Named, not __name__: under `python -m` that is "__main__", outside conf/report.yaml's logger.
log = logging.getLogger("analysis.report")

REPORT_FILE = "report.md"
TITLE = "Baseline vs LIFT EMA study: report"
# formats= entries that are documents, not figure files: report.md is always written, "html"
# adds report.html (its figures embedded as PNG)
DOCUMENT_FORMATS = ("md", "html")
class FormatError(UserError, ValueError):
    """A format neither matplotlib can write nor a document format (md, html)."""


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


def _made_by(study: Study, study_dir, runs, missing: list[str], warnings: list[str]) -> str:
    """The line under the title: where the runs came from, and what waits at the end."""
    source = ", ".join(str(p) for p in ([study_dir] if study_dir else []) + list(runs or []))
    evaluated = int((study.runs["eval_rows"] > 0).sum())
    return (f"Made by `python -m analysis.report` from {_count(len(study.runs), 'run')} "
            f"in {source} ({evaluated} evaluated). At the end: how every number was made, the "
            f"runs, the environments, {_count(len(missing), 'missing piece')} and "
            f"{_count(len(warnings), 'warning')}.")


def _count(n: int, noun: str) -> str:
    return f"{n or 'no'} {noun}{'' if n == 1 else 's'}"


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
    warnings = find_warnings(summary) + mixed_environment_warnings(study)
    for message in warnings:
        log.warning("warning: %s", message)

    protocols = list(summary["protocol"].drop_duplicates())
    several = len(protocols) > 1
    lines = [f"# {TITLE}", "", _made_by(study, study_dir, runs, missing, warnings), ""]
    if several:
        lines += [f"**{len(protocols)} FID protocols.** {SPLIT_NOTE}", ""]
    for protocol in protocols:
        folder = out / slug(protocol) if several else out
        part = summary[summary["protocol"] == protocol]
        lines += results_section(study, part, protocol, out, folder, formats, several,
                                 fid_scale)
    if not protocols:
        lines += ["## Results", "", "No FID rows yet: see Missing.", ""]
    lines += agreement_section(study)
    lines += training_section(study, out, formats)
    lines += samples_section(study, out)
    lines += appendix_lines(Appendix(study, summary, protocols, missing, warnings))

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
