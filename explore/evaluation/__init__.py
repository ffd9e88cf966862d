"""Scoring checkpoints: the evaluation loop (`loop`) and what it shares across rows (`context`),
the metric columns of a row (`rows`), features and their cache (`features`, `extractors`), the
metrics from one feature extraction, the one FID path (`metrics`), memorisation (`memorization`),
the weight sets of a checkpoint (`weights`), post-hoc EMA as a stage (`posthoc`), and the
settings they run with (`settings`).

May import: explore.run, explore.lift, explore.ema, explore.nets, explore.core (never
explore.training, and never the config: explore.evaluate and explore.posthoc hand it settings).
"""
