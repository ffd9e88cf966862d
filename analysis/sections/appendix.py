"""The report's closing sections: how every number was made, the runs, what is missing, warnings.

Why at the end: a reader comes for the answer (the verdict, the results table and the FID
figure on the first screen, as TensorBoard's scalars page, W&B reports and the EDM2 paper's
tables do), and these sections are what one checks after reading it. A warning that
changes how a number reads (an EMA still mostly its initial weights) is also a footnote
beside that number, so it is not lost down here.

`SECTIONS` lists the closing sections in order; another one (say, the software versions that
made the rows) is one more function of an `Appendix` added to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from ..load import Study
from ..tables.environments import environment_table
from ..tables.formats import to_markdown
from .protocol import protocol_header, runs_table


@dataclass
class Appendix:
    """What the closing sections are made from."""

    study: Study
    summary: pd.DataFrame
    protocols: list[str]
    missing: list[str]
    warnings: list[str]


def protocol_section(a: Appendix) -> list[str]:
    """Per FID protocol: the table of what its numbers were made with."""
    lines = ["## Protocol", "",
             "Every FID is read within its protocol (dataset, image size, number of images, "
             "sampling steps, extractor, real subset); each protocol's facts:", ""]
    for protocol in a.protocols:
        part = a.summary[a.summary["protocol"] == protocol]
        lines += [f"### FID protocol: {protocol}", "",
                  *protocol_header(a.study, protocol, part)]
    if not a.protocols:
        lines += ["No FID rows yet: see Missing.", ""]
    return lines


def runs_section(a: Appendix) -> list[str]:
    return ["## Runs", "", *runs_table(a.study.runs)]


def environments_section(a: Appendix) -> list[str]:
    """What software and machines made the runs and the rows (run.json's environments,
    fid.csv's environment column): compare two studies' numbers only knowing this."""
    table = environment_table(a.study)
    lines = ["## Environments", ""]
    if table.empty:
        return lines + ["No environment recorded (runs made before run.json had one).", ""]
    return lines + ["Each environment that trained a run or made an evaluation row (id: a hash "
                    "of the torch, CUDA, cuDNN, device, Python and package versions and the "
                    "commit; run.json and eval/environments.json hold the full records):", "",
                    to_markdown(table), ""]


def _list_section(title: str, messages: list[str], empty: str) -> list[str]:
    return [f"## {title}", "", *([f"- {m}" for m in messages] or [empty]), ""]


def missing_section(a: Appendix) -> list[str]:
    return _list_section("Missing", a.missing, "Nothing missing.")


def warnings_section(a: Appendix) -> list[str]:
    return _list_section("Warnings", a.warnings, "No warnings.")


SECTIONS: list[Callable[[Appendix], list[str]]] = [
    protocol_section, runs_section, environments_section, missing_section,
    warnings_section,
]


def appendix_lines(a: Appendix) -> list[str]:
    """The report lines of every closing section, in `SECTIONS` order."""
    return [line for section in SECTIONS for line in section(a)]
