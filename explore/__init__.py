"""Baseline vs LIFT EMA study: the library and its command-line entry points.

    python -m explore.train      explore/train.py      read the config, train one run
    python -m explore.evaluate   explore/evaluate.py   read the config, score every checkpoint
    python -m explore.posthoc    explore/posthoc.py    read the config, reconstruct post-hoc EMAs
                                 explore/cli.py        the Hydra wrapper they share

The entry points are the only modules that read the config; they hand typed settings down.
Subpackages, each importing only those below it:

    training/  evaluation/    the two stages (never each other)
    run/                      the run folder contract: files, run.json, fid.csv, checkpoints
    lift/                     LIFT's error heatmap and DP sampling paths
    ema/                      averages as maths, no file I/O
    nets/                     models, noise schedule, sampling, data
    core/                     errors, devices, atomic files, config composition
"""
