"""The report's "Training" section: training loss, EMA diagnostics and held-out loss figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..figures.overfitting import heldout_figure
from ..figures.training import ema_figure, training_figure
from ..load import Study, ema_diagnostics
from ..stats.overfitting import heldout_frame
from .files import figure_links, save_figure


def training_section(study: Study, out: Path, formats: Sequence[str]) -> list[str]:
    """Training loss, EMA diagnostics and held-out loss figures."""
    lines = ["## Training", ""]
    loss = save_figure(training_figure(study.metrics), out / "training_loss", formats)
    lines += figure_links(loss, out, "Training loss vs epoch (one panel per model: "
                          "LIFT's loss sums its two scales, not comparable with Baseline's)")
    diagnostics = ema_diagnostics(study.metrics) if not study.metrics.empty else pd.DataFrame()
    ema = save_figure(ema_figure(diagnostics), out / "ema_diagnostics", formats)
    lines += figure_links(ema, out, "EMA diagnostics vs epoch")
    if not loss and not ema:
        lines += ["No training metrics yet: see Missing.", ""]
    held = heldout_frame(study.metrics) if not study.metrics.empty else pd.DataFrame()
    lines += ["### Held-out loss", ""]
    figure = save_figure(heldout_figure(held), out / "heldout_loss", formats)
    lines += figure_links(figure, out, "Held-out (solid) and training (dashed) loss vs epoch, "
                          "per weight set, on fixed (image, t, noise) triples")
    if not figure:
        lines += ["No held-out loss in metrics.csv (loss_holdout): the runs had no held-out "
                  "images (data.holdout_num or data.holdout_root).", ""]
    return lines
