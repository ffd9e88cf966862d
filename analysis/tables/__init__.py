"""3. Tables: the report's tables as frames of text cells, read from analysis.stats, and as
Markdown and LaTeX text. Nothing here writes a file (analysis.sections.files does).

    cells         one cell: "27.90 ± 0.10 (n=3) @ 400ep †", "-5.17 [-5.40, -4.94] *"; the marks
    results       the results table (raw against one averaged weight set) and metrics by epoch
    lengths       which EMA length: the best length per epoch, every weight set in one table
    lag           BEMA and the EMA's lag
    environments  the software and machines that made the numbers
    formats       a table as Markdown or LaTeX (booktabs)

May import analysis.stats, analysis.load, explore.
"""

from .cells import (
    GAIN_COLUMN,
    LOW_MARK,
    NOT_AVAILABLE,
    SIGNIFICANT_MARK,
    fid_cell,
    fmt_count,
    fmt_fid,
    fmt_gain,
    gain_decimals,
    seeds_text,
    spread_decimals,
)
from .environments import environment_table
from .formats import latex_by_hand, to_latex, to_markdown
from .lag import lag_table
from .lengths import BEST_MARK, LENGTH_COLUMNS, NO_LENGTH, length_results, length_table
from .results import RESULT_COLUMNS, epoch_table, results_table

__all__ = [
    "BEST_MARK",
    "GAIN_COLUMN",
    "LENGTH_COLUMNS",
    "LOW_MARK",
    "NOT_AVAILABLE",
    "NO_LENGTH",
    "RESULT_COLUMNS",
    "SIGNIFICANT_MARK",
    "environment_table",
    "epoch_table",
    "fid_cell",
    "fmt_count",
    "fmt_fid",
    "fmt_gain",
    "gain_decimals",
    "lag_table",
    "latex_by_hand",
    "length_results",
    "length_table",
    "results_table",
    "seeds_text",
    "spread_decimals",
    "to_latex",
    "to_markdown",
]
