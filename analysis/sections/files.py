"""Where a section's tables and figures go: written under the report folder (`write_table`:
Markdown, CSV and LaTeX; `save_figure`: one file per format), linked from report.md
(`figure_links`, `file_links`), and each table printed on the terminal as the report is made
(`print_table`). File names: `slug` of a label, `results_stem` of a results table.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ..figures.style import paper_style
from ..tables.formats import to_latex, to_markdown


def slug(text: str) -> str:
    """A file-name-safe form of a label ("EMA 0.9999" -> "ema-0.9999")."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def results_stem(summary: pd.DataFrame, variant: str | None) -> str:
    """results_<weights id> ("results_ema0.9999"), results_raw without an averaged set."""
    if variant is None:
        return "results_raw"
    weights_id = summary.loc[summary["variant"] == variant, "weights_id"].iloc[0]
    return "results_" + weights_id.replace("@", "")


@paper_style
def save_figure(fig: Figure | None, stem: Path, formats: Sequence[str]) -> list[Path]:
    """Save ``fig`` as ``<stem>.<format>`` for each format; returns the paths ([] for no
    figure: its builder had nothing to draw)."""
    if fig is None:
        return []
    paths = [stem.parent / f"{stem.name}.{fmt}" for fmt in formats]
    # matplotlib's PDF backend subsets fonts through fontTools, which logs every table at INFO
    logging.getLogger("fontTools").setLevel(logging.WARNING)
    for path in paths:
        fig.savefig(path, bbox_inches="tight")  # nothing (legend, long titles) cut at the edge
    return paths


def write_table(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Write ``<stem>.md``, ``.csv`` and ``.tex``; returns their paths."""
    # Not Path.with_suffix: a stem like "results_ema0.9999" already holds a dot.
    md, csv, tex = (stem.parent / f"{stem.name}.{ext}" for ext in ("md", "csv", "tex"))
    md.write_text(to_markdown(table) + "\n")
    table.to_csv(csv)
    tex.write_text(to_latex(table))
    return [md, csv, tex]


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


def print_table(title: str, table: pd.DataFrame) -> None:
    print(f"\n{title}\n{to_markdown(table)}")
