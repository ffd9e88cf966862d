"""Analysis stage of the EMA study: a study's result files -> its report.

The pipeline, one step per subpackage, each importing only the steps above it in this list:

    load.py     1. run folders -> tidy frames (`load_study` -> `Study`: runs, fid, metrics)
    stats/      2. numbers from the frames: seed statistics, paired EMA - raw intervals, EMA
                   lengths, BEMA's lag, held-out loss and memorisation, what is missing
    tables/     3. tables of text cells, and as Markdown or LaTeX
    figures/    3. matplotlib figures at paper size
    sections/   4. the report's Markdown lines, section by section (and the only step that
                   writes the table and figure files)
    page/       5. report.html from report.md's lines
    report.py   `python -m analysis.report`: `make_report`, the report's outline

Public API:

- ``load_study(study_dir=None, runs=None) -> Study`` (frames ``runs``, ``fid``, ``metrics``)
- ``dedupe_networks(fid)``: one row per network and weight set (raw rows shared by runs that
  differ only in EMA decay counted once)
- ``summarize(fid)``: mean/std over seeds (training, sampling) per protocol, series, weight set
  and epoch, for FID, KID, precision and recall
- ``results_table(summary, variant)``, ``epoch_table(summary)``: the report's tables (EMA - raw
  paired per seed, with its 95% interval: ``paired_interval``, analysis/stats/intervals.py)
- ``make_report(study_dir=None, runs=None, out=None, formats=("png", "pdf")) -> Path``

Synthetic run folders with known optima, for testing the report, are a test fixture:
tests/synthetic_runs.py (``write_study`` / ``write_run``).
"""

from .load import NoRunsFoundError, Study, dedupe_networks, ema_diagnostics, load_study
from .stats import paired_interval, summarize, t_quantile
from .tables import epoch_table, results_table


def __getattr__(name: str):
    # Imported on first use: `python -m analysis.report` must not find analysis.report
    # already imported by the package (runpy warns), and loading needs no Hydra.
    if name == "make_report":
        from .report import make_report

        return make_report
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")

__all__ = [
    "NoRunsFoundError",
    "Study",
    "dedupe_networks",
    "ema_diagnostics",
    "epoch_table",
    "load_study",
    "make_report",
    "paired_interval",
    "results_table",
    "summarize",
    "t_quantile",
]
