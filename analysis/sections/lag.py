"""The "BEMA and the EMA's lag" part of a protocol's section: verdict sentences, the lag table
and its figure; nothing without a BEMA.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..figures.lag import lag_figure
from ..tables.cells import SIGNIFICANT_MARK
from ..tables.formats import to_markdown
from ..tables.lag import lag_table
from .files import figure_links, file_links, print_table, save_figure, write_table
from .verdicts import lag_verdicts


def lag_section(summary: pd.DataFrame, protocol: str, out: Path, folder: Path,
                formats: Sequence[str], fid_scale: str) -> list[str]:
    """"Does BEMA remove the lag?": the early epochs and the final one, BEMA against the
    longest exponential EMA and against raw, paired; [] without a BEMA."""
    table = lag_table(summary)
    if table is None:
        return []
    files = write_table(table, folder / "bema_lag")
    print_table(f"BEMA and the lag [{protocol}]", table)
    lines = ["### BEMA and the EMA's lag", "",
             "BEMA (Block & Zhang 2025) adds a bias correction alpha_t (theta - theta0) to an "
             "EMA whose decay grows with the step, to keep the averaging without the lag. "
             "Differences paired per (checkpoint, sampling seed), 95% interval, "
             f"{SIGNIFICANT_MARK} when it excludes 0; negative = BEMA better.", ""]
    lines += [f"- {s}" for s in lag_verdicts(table)] + [""]
    lines += [to_markdown(table), ""]
    figure = save_figure(lag_figure(summary, "BEMA vs EMA vs raw", fid_scale),
                         folder / "bema_lag", formats)
    lines += figure_links(figure, out, "FID vs epoch: raw (solid black), the EMAs (dashed, "
                          "dotted), BEMA (thick), ± std over seeds")
    return lines + [file_links(files, out), ""]
