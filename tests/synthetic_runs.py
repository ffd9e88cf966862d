"""Synthetic run folders in the result-file contract, with known optima.

Why: the report is built and tested before real training and evaluation finish. These files
have the shapes the trainer and evaluator write (see ``analysis.load``), and their FIDs are
the STUDY.md table plus a known per-seed offset, so every cell of a report can be checked. A
test fixture: the tests import it as a plain module from tests/ (``from synthetic_runs import``).

Known values (``known_fid``), with offset = (seed - mean(seeds)) * seed_step, plus
(sample_seed - mean(sample_seeds)) * sample_step for studies with several sampling seeds
(``write_study(sample_seeds=...)``; without them rows have no sample_seed column, as fid.csv files
written before it, and read as seed 42):

- raw: the STUDY.md raw columns (Baseline best 33.07 @ 200, LIFT DP-Total best 36.65 @ 2000);
  LIFT diagonal / DP-64 = DP-Total + 12.42 / + 11.74 (best 49.07 / 48.39, as STUDY.md).
- EMA 0.9999: the STUDY.md EMA columns (Baseline best 27.90 @ 400, LIFT 28.91 @ 400).
- EMA at any other decay: raw - 3 (a short average tracks the raw network).
- post-hoc EMA: raw - 4.

Other metrics (``known_metrics``, with ``metrics=True``): KID = FID / 1000 (so the tables' KID×10³
equals the FID), kid_std 0.001; precision 0.60 raw, 0.70 any average; recall 0.50 raw, 0.40 any
average; both + offset / 100.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from explore.ema.names import fmt_value
from explore.run.folder import FID_FILE, METRICS_FILE, RUN_FILE

EPOCHS = (200, 400, 600, 800, 1000, 1200, 1400, 1600, 1800, 2000)
# STUDY.md, "Numbers the original study reported": (Baseline raw, LIFT DP-Total raw,
# Baseline EMA, LIFT EMA DP-Total) per epoch.
STUDY_TABLE = {
    200: (33.07, 80.53, 28.22, 36.83),
    400: (41.54, 39.35, 27.90, 28.91),
    600: (34.04, 46.48, 30.00, 31.37),
    800: (40.82, 40.43, 31.52, 34.70),
    1000: (41.05, 63.59, 33.05, 34.95),
    1200: (52.32, 40.11, 33.80, 35.49),
    1400: (45.85, 40.55, 34.94, 35.92),
    1600: (48.13, 40.28, 36.17, 36.51),
    1800: (45.61, 53.96, 37.11, 37.80),
    2000: (59.37, 36.65, 38.62, 38.55),
}
STUDY_DECAY = 0.9999
PATH_OFFSET = {"dp_total": 0.0, "diagonal": 12.42, "dp_64": 11.74, "ddim": 0.0}
PROTOCOL = {"num_images": 15803, "num_steps": 18, "extractor": "inception-v3-compat",
            "schedule": "study", "final_step": "study"}
MODEL_PATHS = {"baseline": ("ddim",), "lift": ("dp_total",)}

# fid(path, weights_id, epoch) -> FID, or None for "not evaluated"; weights_id as in
# analysis.load: "raw", "ema@0.9999", "phema@0.1". With sample_seeds, it is called with the
# sampling seed as a fourth argument.
FidFn = Callable[..., "float | None"]
# extra(path, weights_id, epoch, sample_seed) -> more columns of that row (kid, precision,
# recall, boot_seed, fid_boot, ...)
ExtraFn = Callable[[str, str, int, int], dict]


def known_fid(model: str, path: str, weights_id: str, epoch: int, offset: float = 0.0) -> float:
    """The synthetic FID of one eval row (see the module docstring for the rules)."""
    baseline_raw, lift_raw, baseline_ema, lift_ema = STUDY_TABLE[epoch]
    raw = (baseline_raw if model == "baseline" else lift_raw) + PATH_OFFSET.get(path, 0.0)
    if weights_id == "raw":
        value = raw
    elif weights_id == f"ema@{fmt_value(STUDY_DECAY)}":
        ema = baseline_ema if model == "baseline" else lift_ema
        value = ema + PATH_OFFSET.get(path, 0.0)
    elif weights_id.startswith("ema@"):
        value = raw - 3.0
    else:
        value = raw - 4.0
    return value + offset


def known_metrics(weights_id: str, fid: float, offset: float = 0.0) -> dict:
    """KID, precision and recall of a synthetic row (see the module docstring)."""
    averaged = weights_id != "raw"
    return {"kid": fid / 1000, "kid_std": 0.001,
            "precision": (0.70 if averaged else 0.60) + offset / 100,
            "recall": (0.40 if averaged else 0.50) + offset / 100}


def _share(decay: float, steps: int) -> float:
    """Post-init share of an EMA after ``steps`` updates: 1 - decay^steps."""
    return 1.0 - decay**steps


def _metrics_rows(model: str, seed: int, decays: Sequence[float], epochs: int,
                  steps_per_epoch: int, every: int) -> pd.DataFrame:
    """Training metrics: a decaying loss (LIFT: loss_64 + loss_32) and EMA diagnostics."""
    epoch = np.arange(every, epochs + 1, every)
    step = epoch * steps_per_epoch
    scale = 1.4 if model == "lift" else 1.0  # LIFT's loss sums two scales
    loss = scale * (0.03 + 0.05 * np.exp(-epoch / 300)) + 0.001 * seed
    rows = {"epoch": epoch, "step": step, "loss": loss,
            "loss_64": 0.6 * loss if model == "lift" else np.nan,
            "loss_32": 0.4 * loss if model == "lift" else np.nan,
            "lr": 1e-4, "seconds": 60.0, "images_per_s": 250.0}
    for i, decay in enumerate(decays):
        suffix = "" if i == 0 else f"@{fmt_value(decay)}"  # primary decay unsuffixed
        # The EMA starts equal to the raw weights and falls behind them as training moves on;
        # a longer average lags further.
        share = _share(decay, step)
        rms = 0.01 * scale * (1 - decay) ** 0.5 * share
        rows.update({f"ema_mean_abs_delta{suffix}": 0.8 * rms, f"ema_rms_delta{suffix}": rms,
                     f"ema_rel_rms_delta{suffix}": rms / 0.05,
                     f"ema_max_abs_delta{suffix}": 8 * rms, f"ema_share{suffix}": share})
    return pd.DataFrame(rows)


def _heldout_rows(metrics: pd.DataFrame, model: str, ema_decays: Sequence[float]) -> dict:
    """Held-out loss columns (explore.training.heldout's names): the held-out loss rises after
    epoch 1000 while the fixed training loss keeps falling; averages sit 0.002 lower."""
    epoch = metrics["epoch"].to_numpy()
    train = metrics["loss"].to_numpy() * 0.9
    held = train + 0.0001 * np.maximum(epoch - 1000, 0) / 100
    # (prefix, suffix) of each weight set: raw unprefixed, the primary EMA unsuffixed
    names = [("", "")] + [("ema_", "" if i == 0 else f"@{fmt_value(d)}")
                          for i, d in enumerate(ema_decays)]
    out = {}
    for prefix, suffix in names:
        shift = 0.002 if prefix else 0.0
        out.update({f"{prefix}loss_train_fixed{suffix}": train - shift,
                    f"{prefix}loss_holdout{suffix}": held - shift,
                    f"{prefix}loss_gap{suffix}": held - train})
    return out


def sigma_rel_of_decay(decay: float, step: int) -> float:
    """EDM2's sigma_rel of an exponential EMA at a step (explore.ema's formula)."""
    return float(f"{np.sqrt(decay) / ((1.0 - decay) * step):.3g}")


def write_run(
    root: str | Path,
    name: str,
    *,
    model: str,
    seed: int,
    ema_decays: Sequence[float] = (),
    fid: FidFn | None = None,
    epochs: Iterable[int] = EPOCHS,
    paths: Sequence[str] | None = None,
    phema: Sequence[float] = (),
    dataset: str = "afhqv2",
    image_size: int = 64,
    train_images: int = 15803,
    steps_per_epoch: int = 246,
    batch_size: int = 64,
    protocol: dict | None = None,
    evaluated: bool = True,
    metrics_every: int = 50,
    sample_seeds: Sequence[int] | None = None,
    extra: ExtraFn | None = None,
    heldout: bool = False,
    tracked_sigma_rels: Sequence[float] = (),
) -> Path:
    """Write one run folder (run.json, metrics.csv and, if ``evaluated``, eval/fid.csv).

    ``ema_decays[0]`` is the primary decay (weights ``ema``), the others are ``ema@d``.
    ``fid`` defaults to ``known_fid`` with no seed offset; it may return None to leave a
    row out. ``protocol`` overrides num_images / num_steps / extractor. ``sample_seeds``: one
    row per sampling seed (a ``sample_seed`` column; None: no such column, one row). ``extra``
    adds columns per row. EMA rows have ``lag_epochs`` = 1 / (1 - decay) / steps_per_epoch.
    ``phema`` rows and EMA rows have ``sigma_rel`` (``sigma_rel_of_decay`` for EMA);
    ``tracked_sigma_rels`` go to run.json's ema_sigma_rels; ``heldout``: metrics.csv gets the
    held-out loss columns (``_heldout_rows``).
    """
    run_dir = Path(root) / name
    (run_dir / FID_FILE).parent.mkdir(parents=True, exist_ok=True)
    epochs = sorted(epochs)
    primary = ema_decays[0] if ema_decays else None
    info = {"run": name, "model": model, "seed": seed, "ema_decay": primary,
            "ema_decays": list(ema_decays), "dataset": dataset, "image_size": image_size,
            "num_images": train_images, "epochs": max(epochs),
            "steps_per_epoch": steps_per_epoch, "batch_size": batch_size,
            "ema_sigma_rels": list(tracked_sigma_rels)}
    (run_dir / RUN_FILE).write_text(json.dumps(info, indent=2))
    metrics = _metrics_rows(model, seed, ema_decays, max(epochs), steps_per_epoch, metrics_every)
    if heldout:
        metrics = metrics.assign(**_heldout_rows(metrics, model, ema_decays))
    metrics.to_csv(run_dir / METRICS_FILE, index=False)
    if not evaluated:
        return run_dir

    fid = fid or (lambda path, weights_id, epoch: known_fid(model, path, weights_id, epoch))
    protocol = {**PROTOCOL, **(protocol or {})}
    weight_sets = [("raw", "raw", None)]
    weight_sets += [("ema" if i == 0 else f"ema@{fmt_value(d)}", f"ema@{fmt_value(d)}", d)
                    for i, d in enumerate(ema_decays)]
    weight_sets += [(f"phema@{fmt_value(s)}", f"phema@{fmt_value(s)}", None) for s in phema]
    rows = []
    for epoch in epochs:
        step = epoch * steps_per_epoch
        for path in paths or MODEL_PATHS[model]:
            for weights, weights_id, decay in weight_sets:
                for sample_seed in sample_seeds or [None]:
                    value = (fid(path, weights_id, epoch) if sample_seed is None
                             else fid(path, weights_id, epoch, sample_seed))
                    if value is None:
                        continue
                    share = _share(decay, step) if decay is not None else None
                    row = {"run": name, "model": model, "seed": seed, "ema_decay": primary,
                           "dataset": dataset, "image_size": image_size, "epoch": epoch,
                           "step": step, "weights": weights, "path": path, **protocol,
                           "fid": value, "ema_share": share,
                           "ema_share_low": None if share is None else share < 0.5,
                           "lag_epochs": (1 / (1 - decay) / steps_per_epoch
                                          if decay is not None else None),
                           "sigma_rel": (sigma_rel_of_decay(decay, step) if decay is not None
                                         else float(weights_id.split("@")[1])
                                         if weights_id.startswith("phema@") else None),
                           "seconds": 12.5}
                    if sample_seed is not None:
                        row["sample_seed"] = sample_seed
                    if extra is not None:
                        row.update(extra(path, weights_id, epoch, sample_seed))
                    rows.append(row)
    pd.DataFrame(rows).to_csv(run_dir / FID_FILE, index=False)
    return run_dir


def write_study(
    root: str | Path,
    *,
    models: Sequence[str] = ("baseline", "lift"),
    seeds: Sequence[int] = (0, 1, 2),
    decays: Sequence[float] = (0.9999, 0.999),
    one_run_per_decay: bool = True,
    seed_step: float = 0.1,
    lift_paths: Sequence[str] = ("dp_total",),
    sample_seeds: Sequence[int] | None = None,
    sample_step: float = 0.0,
    metrics: bool = False,
    **run_kwargs,
) -> list[Path]:
    """Write a study with known optima; returns the run folders.

    ``one_run_per_decay``: one run per (model, decay, seed), so raw rows repeat across decays
    (the case ``dedupe_networks`` exists for); otherwise one run per (model, seed) tracking
    every decay (primary = decays[0], the others as ``ema@d``). LIFT is sampled along
    ``lift_paths``. Seed s shifts every FID by
    (s - mean(seeds)) * seed_step, so the seed-mean equals ``known_fid``; with
    ``sample_seeds``, sampling seed q shifts it by (q - mean(sample_seeds)) * sample_step too.
    ``metrics``: KID, precision and recall columns (``known_metrics``).
    """
    centre = float(np.mean(seeds))
    sample_centre = float(np.mean(sample_seeds)) if sample_seeds else 0.0
    decay_sets = [[d] for d in decays] if one_run_per_decay else [list(decays)]
    run_dirs = []
    for model in models:
        for decay_set in decay_sets:
            for seed in seeds:
                offset = (seed - centre) * seed_step

                def fid(path, weights_id, epoch, sample_seed=None, model=model, offset=offset):
                    shift = (0.0 if sample_seed is None
                             else (sample_seed - sample_centre) * sample_step)
                    return known_fid(model, path, weights_id, epoch, offset + shift)

                def extra(path, weights_id, epoch, sample_seed, fid=fid, offset=offset):
                    if not metrics:
                        return {}
                    return known_metrics(weights_id, fid(path, weights_id, epoch, sample_seed),
                                         offset)

                tag = "-".join(f"ema{fmt_value(d)}" for d in decay_set) or "noema"
                paths = lift_paths if model == "lift" else MODEL_PATHS[model]
                run_dirs.append(write_run(root, f"{model}-{tag}-s{seed}", model=model, seed=seed,
                                          ema_decays=decay_set, fid=fid, paths=paths,
                                          sample_seeds=sample_seeds, extra=extra,
                                          **run_kwargs))
    return run_dirs


def write_length_study(root: Path, fid_for: Callable[[str], Callable], sigmas: Sequence[float],
                       epochs: Sequence[int]) -> Path:
    """A post-hoc study: per model one run with EMA 0.999 and the power-function lengths
    ``sigmas`` reconstructed (0.07 tracked), FIDs from ``fid_for(model)``, held-out losses and a
    memorisation rate growing with the epoch."""
    for model in ("baseline", "lift"):
        write_run(root, f"{model}-phema", model=model, seed=0, ema_decays=[0.999],
                  phema=sigmas, tracked_sigma_rels=[0.07], fid=fid_for(model),
                  epochs=epochs, heldout=True,
                  extra=lambda p, w, e, s: {"memorization": 0.01 * e / 800})
    return root
