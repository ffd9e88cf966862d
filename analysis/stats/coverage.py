"""What a study lacks, and what reads with care, as sentences: the report lists them (Missing,
Warnings) and logs them, instead of papering over them.

`find_missing` (data that is not there): runs not evaluated (or only partly), runs without
training metrics, eval rows without a FID, series without EMA rows, epochs evaluated for one
model and not the other, weight sets evaluated at fewer epochs or (training or sampling) seeds
than their series.

`find_warnings` (data that is there but reads with care): EMA rows whose EMA was still mostly
its initial weights, whose FID says little about training. `mixed_environment_warnings`: a
protocol whose rows were made with different software or machines, where a difference between
numbers may be the software's rather than the EMA's. Kept apart from the missing pieces so that
"Missing" in the report means missing.
"""

from __future__ import annotations

import pandas as pd

from explore.ema.names import fmt_value
from explore.run.folder import FID_FILE, METRICS_FILE

from ..load import Study, environment_records, model_name
from .seeds import variants

LOW_SHARE = (
    "EMA still mostly initial weights at {where}{share}: its FID reflects the initialisation, "
    "not training"
)


def _epochs(epochs) -> str:
    """"epoch 200" or "epochs 200, 400"."""
    epochs = sorted(int(e) for e in epochs)
    return ("epoch " if len(epochs) == 1 else "epochs ") + ", ".join(map(str, epochs))


def _run_messages(study: Study) -> list[str]:
    messages = []
    fid = study.fid
    for run in study.runs.itertuples():
        rows = fid[fid["run"] == run.run]
        if run.eval_rows == 0:
            messages.append(f"run {run.run}: not evaluated yet (no rows in {FID_FILE})")
        if not run.has_metrics:
            messages.append(f"run {run.run}: no {METRICS_FILE} (left out of training figures)")
        if rows.empty:
            continue
        if rows["fid"].isna().any():
            bad = rows[rows["fid"].isna()]
            messages.append(f"run {run.run}: {len(bad)} eval rows without a FID value at "
                            f"{_epochs(bad['epoch'].unique())} (left out)")
        last = int(rows["epoch"].max())
        if pd.notna(run.epochs) and last < int(run.epochs):
            messages.append(f"run {run.run}: evaluated up to epoch {last} of {int(run.epochs)}")
        tracked = list(run.ema_decays) or ([] if pd.isna(run.ema_decay) else [run.ema_decay])
        if tracked and not (rows["kind"] == "ema").any():
            decays = ", ".join(fmt_value(d) for d in tracked)
            messages.append(f"run {run.run}: tracks EMA {decays} but {FID_FILE} has no EMA rows")
    return messages


def _coverage_messages(part: pd.DataFrame) -> list[str]:
    """Series without EMA rows; epochs one model has and another lacks."""
    messages = []
    all_variants = variants(part)
    for series, rows in part.groupby("series", sort=False):
        have = set(rows["variant"])
        if "raw" not in have:
            messages.append(f"{series}: no raw rows (no 'Without EMA' column)")
        if not have - {"raw"}:
            messages.append(f"{series}: no EMA rows (only raw weights evaluated)")
        else:
            messages += [f"{series}: no {v} rows" for v in all_variants if v not in have]
    by_model = {m: set(rows["epoch"]) for m, rows in part.groupby("model", sort=False)}
    every = set().union(*by_model.values())
    for model, epochs in by_model.items():
        if every - epochs:
            others = ", ".join(model_name(m) for m in by_model if m != model)
            messages.append(f"{_epochs(every - epochs)} evaluated for {others} but not for "
                            f"{model_name(model)}")
    return messages


def _weight_set_messages(part: pd.DataFrame) -> list[str]:
    """Per series and weight set: missing epochs, missing seeds, EMA mostly initial."""
    messages = []
    for series, rows in part.groupby("series", sort=False):
        series_epochs = set(rows["epoch"])
        for variant, sub in rows.groupby("variant", sort=False):
            name = f"{series} {variant}"
            lacking_epochs = series_epochs - set(sub["epoch"])
            if lacking_epochs:
                messages.append(f"{name}: not evaluated at {_epochs(lacking_epochs)}"
                                f" (other weights of {series} are)")
            for column, kind in (("seeds", "seed(s)"), ("sample_seeds", "sampling seed(s)")):
                if column in sub:
                    for lacking, epochs in _seed_gaps(sub, column).items():
                        messages.append(f"{name}: {_epochs(epochs)} averaged without {kind} "
                                        f"{', '.join(map(str, lacking))}")
    return messages


def _seed_gaps(sub: pd.DataFrame, column: str) -> dict[tuple, list[int]]:
    """The epochs of one weight set whose seeds (`column`) lack some that other epochs have,
    grouped by the seeds lacking."""
    every = set().union(*map(set, sub[column]))
    gaps: dict[tuple, list[int]] = {}
    for epoch, seeds in zip(sub["epoch"], sub[column], strict=True):
        if set(seeds) != every:
            gaps.setdefault(tuple(sorted(every - set(seeds))), []).append(epoch)
    return gaps


def _share_warnings(part: pd.DataFrame) -> list[str]:
    """Per series and weight set: the epochs whose EMA was still mostly initial weights."""
    messages = []
    for series, rows in part.groupby("series", sort=False):
        for variant, sub in rows.groupby("variant", sort=False):
            low = sub[sub["share_low"]]
            if low.empty:
                continue
            share = low["share_min"].min()
            share = "" if pd.isna(share) else f" (lowest post-init share {share:.2f})"
            messages.append(f"{series} {variant}: "
                            + LOW_SHARE.format(where=_epochs(low["epoch"]), share=share))
    return messages


def _per_protocol(summary: pd.DataFrame, check) -> list[str]:
    """``check(part)`` of every protocol's rows, protocol-tagged when there are several."""
    messages = []
    protocols = list(summary["protocol"].drop_duplicates())
    for protocol in protocols:
        part = summary[summary["protocol"] == protocol]
        tag = f"[{protocol}] " if len(protocols) > 1 else ""
        messages += [tag + m for m in check(part)]
    return messages


def find_missing(study: Study, summary: pd.DataFrame) -> list[str]:
    """Every missing piece of a study, one sentence each; protocol-tagged when several."""
    return _run_messages(study) + _per_protocol(
        summary, lambda part: _coverage_messages(part) + _weight_set_messages(part))


def find_warnings(summary: pd.DataFrame) -> list[str]:
    """What is measured but reads with care (EMA mostly initial weights), one sentence each."""
    return _per_protocol(summary, _share_warnings)


def mixed_environment_warnings(study: Study) -> list[str]:
    """A warning per protocol whose rows were made in more than one recorded environment,
    naming what differs."""
    fid = study.fid
    if "environment" not in fid or fid.empty:
        return []
    records = environment_records(study)
    out = []
    for protocol, part in fid.groupby("protocol", sort=False):
        ids = sorted(set(part["environment"].dropna().astype(str)))
        if len(ids) < 2:
            continue
        fields = ("torch", "cuda", "cudnn", "device_name", "python", "git_commit", "packages")
        differ = [f for f in fields
                  if len({str(records.get(i, {}).get(f)) for i in ids}) > 1]
        out.append(f"The rows of {protocol} were made in {len(ids)} environments "
                   f"({', '.join(ids)}; they differ in {', '.join(differ) or 'nothing recorded'}"
                   f"): a difference between their numbers may be the software's, not the "
                   f"EMA's. See Environments.")
    return out
