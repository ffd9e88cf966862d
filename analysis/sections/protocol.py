"""What every number of a protocol was made with (`protocol_header`: dataset, images, sampling
steps, noise schedule, extractor, metrics, seeds, uncertainty, EMA decays, training) and the runs,
grouped by everything but the seed (`runs_table`).
"""

from __future__ import annotations

import pandas as pd

from explore.ema.names import fmt_value

from ..load import Study, extractor_label
from ..stats.seeds import variants
from ..tables.cells import GAIN_COLUMN, SIGNIFICANT_MARK, seeds_text

SCHEDULES = {
    "study": "study: cosine, betas clipped to [1e-4, 0.02] (the original's)",
    "cosine": "cosine: betas clipped at 0.999 only (not the original's)",
}
FINAL_STEPS = {
    "study": "0 -> 0, returns its input (the original's)",
    "alpha_one": "0 -> alpha_bar 1, the clipped x0 prediction (not the original's)",
}


def _real_images(first: pd.Series, runs: pd.DataFrame) -> str:
    """"512 generated per sampling seed vs 512 real: a random subset of the 2048 training
    images (subset seed 42), the same for every row" (or "all N training images")."""
    n = int(first["num_images"])
    train = runs["num_images"].dropna()
    train = int(train.iloc[0]) if len(train) and train.nunique() == 1 else None
    real = int(first["num_real"]) if pd.notna(first.get("num_real")) else (
        min(n, train) if train else None)
    head = f"{n} generated per sampling seed vs {real if real is not None else '?'} real: "
    if train is None:
        return head + "training images (training set size unknown)"
    if real is not None and real >= train:
        return head + f"all {train} training images"
    seed = first.get("subset_seed")
    seed = f"subset seed {int(seed)}" if pd.notna(seed) else "subset seed unknown"
    return (head + f"a random subset of the {train} training images ({seed}, eval.subset_seed"
            "), the same for every row and sampling seed")


def _metrics_fact(rows: pd.DataFrame) -> str:
    measured = ["FID"]
    if rows["kid"].notna().any():
        n = int(rows["num_images"].iloc[0])
        size = min(1000, n, int(rows["num_real"].min()) if rows["num_real"].notna().any() else n)
        measured.append(f"KID (×10³ in tables; polynomial kernel, unbiased, mean over 100 "
                        f"subsets of {size} images" + (": the whole set, one subset"
                                                       if size >= n else "") + ")")
    if rows["precision"].notna().any():
        measured.append("precision and recall (Kynkäänniemi et al. 2019, k = 3 nearest "
                        "neighbours)")
    return "; ".join(measured) + ", all from the same features of each row's images"


def _uncertainty_fact(summary: pd.DataFrame) -> str:
    several_train = (summary["seeds"].map(len) > 1).any()
    several_sample = (summary["sample_seeds"].map(len) > 1).any()
    spread = ("std over training seeds, each the mean of its sampling seeds" if several_train
              else "std over sampling seeds" if several_sample else "none (one seed)")
    boot = summary["boots"].map(len).gt(0).any()
    interval = ("t-interval over training seeds" if several_train else
                "t-interval over sampling seeds" if several_sample else
                "percentile bootstrap over the generated images' features" if boot else
                "none (one seed, no bootstrap replicates)")
    return (f"± = {spread}; n = seeds averaged. {GAIN_COLUMN} = paired difference per "
            f"(checkpoint, seed), 95% interval: {interval}; {SIGNIFICANT_MARK} = the interval "
            "excludes 0")


def protocol_header(study: Study, protocol: str, summary: pd.DataFrame) -> list[str]:
    """What every number of a protocol section was made with."""
    rows = study.fid[study.fid["protocol"] == protocol]
    first = rows.iloc[0]
    runs = study.runs[study.runs["run"].isin(rows["run"])]
    seeds = "; ".join(f"{series}: {seeds_text(part['seeds'])}"
                      for series, part in summary.groupby("series", sort=False))
    sample_seeds = "; ".join(f"{series}: {seeds_text(part['sample_seeds'])}"
                             for series, part in summary.groupby("series", sort=False))
    decays = sorted(summary["decay"].dropna().unique(), reverse=True)
    training = "; ".join(
        f"{e} epochs x {s} steps, batch {b}"
        for e, s, b in runs[["epochs", "steps_per_epoch", "batch_size"]].drop_duplicates()
        .itertuples(index=False)
    )
    phema = [v for v in variants(summary) if v.startswith("post-hoc")]
    facts = [
        ("Dataset", first["dataset"]),
        ("Image size", f"{first['image_size']}x{first['image_size']}"),
        ("Images", _real_images(first, runs)),
        ("Sampling steps", f"{first['num_steps']:.0f}"),
        ("Noise schedule", SCHEDULES.get(first["schedule"], first["schedule"])),
        ("Final DDIM step", FINAL_STEPS.get(first["final_step"], first["final_step"])),
        ("Feature extractor", extractor_label(first)),
        ("Metrics", _metrics_fact(rows)),
        ("Training seeds", seeds),
        ("Sampling seeds", sample_seeds),
        ("Uncertainty", _uncertainty_fact(summary)),
        ("EMA decays", ", ".join(fmt_value(d) for d in decays) or "none evaluated"),
        ("Post-hoc EMA", ", ".join(phema) or "none evaluated"),
        ("Training", training),
    ]
    return ["| Protocol | |", "|:---|:---|", *(f"| {k} | {v} |" for k, v in facts), ""]


def runs_table(runs: pd.DataFrame) -> list[str]:
    """Runs grouped by everything but the seed (model, EMA decay, dataset, image size)."""
    lines = ["| Group (runs differing only in seed) | Training seeds | Runs | Evaluated |",
             "|:---|:---|---:|---:|"]
    for group, part in runs.groupby("group", sort=False):
        evaluated = int((part["eval_rows"] > 0).sum())
        lines.append(f"| {group} | {seeds_text(part['seed'])} | {len(part)} | {evaluated} |")
    return lines + [""]
