"""2. Statistics: numbers from the loaded frames, and the checks on them; no tables, figures or
files (analysis.tables and analysis.figures render them).

    intervals    confidence intervals of paired EMA - raw differences (t, percentile bootstrap)
    seeds        seed statistics per protocol, series, weight set and epoch (`summarize`)
    results      one averaged weight set against raw per series, at the best and final epochs
    lengths      EMA lengths: sigma_rel of every weight set, the best length per epoch
    lag          BEMA against the EMA and raw, early in training and at the end
    overfitting  held-out loss and memorisation rate as frames
    coverage     what a study lacks, and what reads with care (the report's Missing, Warnings)

May import analysis.load, explore; nothing of analysis above it.
"""

from .intervals import (
    LEVEL,
    Interval,
    paired_interval,
    percentile_interval,
    t_cdf,
    t_interval,
    t_quantile,
)
from .results import SeriesResult, paired, series_results
from .seeds import seed_stats, summarize, variant_rank, variants

__all__ = [
    "LEVEL",
    "Interval",
    "SeriesResult",
    "paired",
    "paired_interval",
    "percentile_interval",
    "seed_stats",
    "series_results",
    "summarize",
    "t_cdf",
    "t_interval",
    "t_quantile",
    "variant_rank",
    "variants",
]
