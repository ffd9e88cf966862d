"""The "EMA length" part of a protocol's section: every averaged weight set in one table, the
other fixed decays' own results, FID against EMA length, the best length per epoch; nothing
unless the rows hold more than one averaged weight set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..figures.lengths import best_length_figure, fid_length_figure
from ..load import Study
from ..stats.lengths import best_lengths, has_several_lengths, length_summary, mark_tracked
from ..tables.cells import GAIN_COLUMN
from ..tables.formats import to_markdown
from ..tables.lengths import BEST_MARK, length_results, length_table
from .files import figure_links, file_links, print_table, results_stem, save_figure, write_table
from .verdicts import significance


def length_section(study: Study, summary: pd.DataFrame, protocol: str, out: Path,
                   folder: Path, formats: Sequence[str], fid_scale: str,
                   tables: dict[str, pd.DataFrame], primary: str | None) -> list[str]:
    """"Which EMA length?": one table of every weight set, FID against EMA length, the best
    length per epoch; [] unless the rows hold more than one averaged weight set. ``tables``:
    the results table of every averaged weight set; the fixed decays besides ``primary`` (the
    results table's) keep their own table files and sentences, while a post-hoc sweep is
    only this one table."""
    if not has_several_lengths(summary):
        return []
    lengths = mark_tracked(length_summary(summary, study.fid), study.runs)
    results = {v: t.attrs["results"] for v, t in tables.items()}
    lines = ["### EMA length", "",
             "Every averaged weight set on one axis, its EMA length σrel (relative std of its "
             "averaging profile; for a fixed decay it shrinks as training goes on, so the "
             "table gives it at the final epoch).", ""]
    table = length_results(summary, lengths, results)
    files = write_table(table, folder / "results_by_length")
    print_table(f"EMA length [{protocol}]", table)
    lines += [to_markdown(table), ""]
    notes = [f"{BEST_MARK} = the lowest FID at its best epoch among a model's averaged "
             "weight sets: picked after looking, which its interval does not account for. "
             f"{GAIN_COLUMN} as in the results table, against raw at its best and final epoch."]
    fixed = set(summary.loc[summary["kind"] == "ema", "variant"])
    for variant, other in tables.items():
        if variant == primary or variant not in fixed:
            continue
        files += write_table(other, folder / results_stem(summary, variant))
        print_table(f"Results: {variant} [{protocol}]", other)
        notes += [significance(series, variant, r)
                  for series, r in results[variant].items()]
    lines += [f"- {n}" for n in notes] + ["", file_links(files, out), ""]
    figure = save_figure(fid_length_figure(lengths, "FID vs EMA length", fid_scale),
                         folder / "fid_vs_ema_length", formats)
    lines += figure_links(figure, out, "FID vs EMA length σrel (raw at the left edge, best "
                          "length starred, fixed decay dotted)")
    figure = save_figure(best_length_figure(best_lengths(lengths)),
                         folder / "best_ema_length", formats)
    lines += figure_links(figure, out, "Best EMA length vs epoch")
    by_epoch = length_table(lengths)
    if not by_epoch.empty:
        files = write_table(by_epoch, folder / "ema_length")
        print_table(f"Best EMA length by epoch [{protocol}]", by_epoch)
        lines += ["Best = the lowest seed-mean FID among the averaged weight sets of that "
                  "epoch:", "", to_markdown(by_epoch), "", file_links(files, out), ""]
    return lines
