"""3. Figures: the report's figures as matplotlib `Figure`s at paper size, read from
analysis.stats' frames. Nothing here writes a file (analysis.sections.files saves them).

    style        the shared look: sizes, fonts, colours per series, axes, the FID scale
    fid          FID against epoch (the report's first figure); precision and recall
    training     training loss and EMA diagnostics
    lengths      FID against EMA length; the best length against epoch
    lag          BEMA against the EMAs and raw
    overfitting  held-out loss; memorisation rate

May import analysis.stats, analysis.load, explore.
"""

from .fid import fid_figure, prc_figure
from .lag import lag_figure
from .lengths import best_length_figure, fid_length_figure
from .overfitting import heldout_figure, memorization_figure
from .style import (
    FID_SCALES,
    ONE_COLUMN,
    TWO_COLUMN,
    fid_log_scale,
    model_colour,
    paper_style,
    series_colour,
    star_shifts,
)
from .training import ema_figure, training_figure

__all__ = [
    "FID_SCALES",
    "ONE_COLUMN",
    "TWO_COLUMN",
    "best_length_figure",
    "ema_figure",
    "fid_figure",
    "fid_length_figure",
    "fid_log_scale",
    "heldout_figure",
    "lag_figure",
    "memorization_figure",
    "model_colour",
    "paper_style",
    "prc_figure",
    "series_colour",
    "star_shifts",
    "training_figure",
]
