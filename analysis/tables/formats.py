"""A table as text: GitHub-flavoured Markdown (`to_markdown`) and LaTeX booktabs (`to_latex`, or
`latex_by_hand` where pandas' jinja2-based renderer is not installed), with ±, † and σ as math
symbols.
"""

from __future__ import annotations

import pandas as pd

from .cells import LOW_MARK

_LATEX_SYMBOLS = {"±": r"$\pm$", LOW_MARK: r"$^\dagger$", "σ": r"$\sigma$",
                  "×10³": r"$\times 10^3$", "×": r"$\times$"}
_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                   "^": r"\textasciicircum{}"}


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
