"""Weight-set names of the averages: ema@<decay> and phema@<sigma_rel>, as in checkpoints (`emas`),
metrics.csv columns, evaluation rows and reconstructed files. The grammar is the run folder's
(explore.runfiles), which also parses them."""

from ..runfiles import ema_name, fmt_value, phema_name

__all__ = ["ema_name", "fmt_value", "phema_name"]
