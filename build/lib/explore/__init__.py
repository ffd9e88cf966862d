"""Baseline vs LIFT EMA study: models, EMA, training, sampling, FID."""
