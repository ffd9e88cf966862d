"""Weight-set names of the averages: ema@<decay> and phema@<sigma_rel>, as in checkpoints (`emas`),
metrics.csv columns, evaluation rows and reconstructed files."""

from __future__ import annotations


def fmt_value(x: float) -> str:
    """Shortest faithful text of a decay or sigma_rel, as in weight-set names (0.9999, 0.1)."""
    return f"{float(x):.10g}"


def ema_name(decay: float) -> str:
    """Weight-set name of an exponential EMA: ema@0.999."""
    return f"ema@{fmt_value(decay)}"


def phema_name(sigma_rel: float) -> str:
    """Weight-set name of a power-function (post-hoc) EMA: phema@0.1."""
    return f"phema@{fmt_value(sigma_rel)}"
