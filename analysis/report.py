"""Make a study's report (tables, figures, report.md) from its result files.

    python -m analysis.report study_dir=outputs/study/ema_vs_raw
    python -m analysis.report runs=[outputs/a,outputs/b] out=reports/today

``make_report`` is the plain function; ``main`` is a thin Hydra wrapper (conf/report.yaml).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from explore.errors import UserError

from .figures import ema_figure, fid_figure, prc_figure, save_figure, training_figure
from .load import Study, dedupe_networks, ema_diagnostics, fmt_value, load_study
from .missing import find_missing
from .stats import Interval
from .tables import (
    GAIN_COLUMN,
    LOW_MARK,
    SIGNIFICANT_MARK,
    SeriesResult,
    epoch_table,
    fmt_gain,
    results_table,
    summarize,
    to_markdown,
    variants,
    write_table,
)

# Named, not __name__: under `python -m` that is "__main__", outside conf/report.yaml's logger.
log = logging.getLogger("analysis.report")

REPORT_FILE = "report.md"
SCHEDULES = {
    "study": "study: cosine, betas clipped to [1e-4, 0.02] (the original's)",
    "cosine": "cosine: betas clipped at 0.999 only (not the original's)",
}
FINAL_STEPS = {
    "study": "0 -> 0, returns its input (the original's)",
    "alpha_one": "0 -> alpha_bar 1, the clipped x0 prediction (not the original's)",
}
SPLIT_NOTE = (
    "FID moves with the feature extractor, the number of images and the number of sampling "
    "steps (STUDY.md: 15+ points between 10k and 15.8k samples), so rows made under different "
    "protocols are never put in one table: each protocol has its own section. Do not compare "
    "numbers across sections."
)


def _slug(text: str) -> str:
    """A file-name-safe form of a label ("EMA 0.9999" -> "ema-0.9999")."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def _seeds(values: Iterable) -> str:
    """"0, 1, 2" from seeds, or from tuples of seeds (a summary's ``seeds`` column)."""
    flat = {int(s) for v in values for s in (v if isinstance(v, tuple) else (v,))}
    return ", ".join(map(str, sorted(flat)))


class FormatError(UserError, ValueError):
    """A figure format matplotlib cannot write."""


def _figure_links(paths: Sequence[Path], out: Path, caption: str) -> list[str]:
    """Embed the first bitmap/vector image Markdown viewers show; link every file."""
    if not paths:
        return []
    rel = [p.relative_to(out).as_posix() for p in paths]
    shown = next((r for r in rel if r.rsplit(".", 1)[-1] in ("png", "svg", "jpg")), None)
    lines = [f"![{caption}]({shown})", ""] if shown else []
    return lines + [f"{caption}: " + ", ".join(f"[{r.rsplit('.', 1)[-1]}]({r})" for r in rel), ""]


def _file_links(paths: Sequence[Path], out: Path) -> str:
    return "Files: " + ", ".join(f"[{p.name}]({p.relative_to(out).as_posix()})" for p in paths)


def _save(fig: Figure | None, stem: Path, formats: Sequence[str]) -> list[Path]:
    return [] if fig is None else save_figure(fig, stem, formats)


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


def _protocol_header(study: Study, protocol: str, summary: pd.DataFrame) -> list[str]:
    """What every number of a protocol section was made with."""
    rows = study.fid[study.fid["protocol"] == protocol]
    first = rows.iloc[0]
    runs = study.runs[study.runs["run"].isin(rows["run"])]
    seeds = "; ".join(f"{series}: {_seeds(part['seeds'])}"
                      for series, part in summary.groupby("series", sort=False))
    sample_seeds = "; ".join(f"{series}: {_seeds(part['sample_seeds'])}"
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
        ("Feature extractor", first["extractor"]),
        ("Metrics", _metrics_fact(rows)),
        ("Training seeds", seeds),
        ("Sampling seeds", sample_seeds),
        ("Uncertainty", _uncertainty_fact(summary)),
        ("EMA decays", ", ".join(fmt_value(d) for d in decays) or "none evaluated"),
        ("Post-hoc EMA", ", ".join(phema) or "none evaluated"),
        ("Training", training),
    ]
    return ["| Protocol | |", "|:---|:---|", *(f"| {k} | {v} |" for k, v in facts), ""]


def _runs_table(runs: pd.DataFrame) -> list[str]:
    """Runs grouped by everything but the seed (model, EMA decay, dataset, image size)."""
    lines = ["| Group (runs differing only in seed) | Seeds | Runs | Evaluated |",
             "|:---|:---|---:|---:|"]
    for group, part in runs.groupby("group", sort=False):
        evaluated = int((part["eval_rows"] > 0).sum())
        lines.append(f"| {group} | {_seeds(part['seed'])} | {len(part)} | {evaluated} |")
    return lines + [""]


def _gain_text(gain: Interval | None) -> str:
    if gain is None:
        return "not measured for both"
    if not gain.has_interval:
        return fmt_gain(gain) + " (no interval: one seed and no bootstrap replicates)"
    verdict = ("significant, EMA better" if gain.significant and gain.estimate < 0 else
               "significant, EMA worse" if gain.significant else "not significant")
    return f"{fmt_gain(gain).rstrip(' ' + SIGNIFICANT_MARK)} ({gain.method}): {verdict}"


def _significance(series: str, variant: str, r: SeriesResult) -> str:
    """One sentence: is the EMA's effect significant at the best and at the final epoch?"""
    best = (f"the best epochs (raw {r.best_raw.name}, EMA {r.best_ema.name})"
            if r.best_raw is not None and r.best_ema is not None else "the best epochs")
    return (f"**{series}**: FID of {variant} minus raw at {best}: {_gain_text(r.best_gain)}; "
            f"at the final epoch {r.final}: {_gain_text(r.final_gain)}.")


def _plateau(series: str, variant: str, r: SeriesResult) -> str | None:
    """Raw FID still falling at the last evaluated epoch: say what that means for the EMA."""
    if r.best_raw is None or int(r.best_raw.name) != r.final:
        return None
    lag = r.last_ema["lag_epochs"] if r.last_ema is not None else float("nan")
    lag = f"{lag:.1f} epochs" if pd.notna(lag) else "an unknown number of epochs"
    return (f"{series}: raw FID is lowest at the last evaluated epoch ({r.final}): training has "
            f"not plateaued, so an EMA that trails the raw weights is expected to be worse; "
            f"{variant} lags them by {lag} (lag_epochs).")


def _results_notes(table: pd.DataFrame, summary: pd.DataFrame, variant: str | None) -> list[str]:
    finals = ", ".join(f"{s} {e}" for s, e in table.attrs["final_epochs"].items())
    notes = [
        "Best = the epoch whose seed-mean FID is lowest; ± = std over seeds, n = seeds "
        f"(n=a×b: a training x b sampling seeds); {GAIN_COLUMN} = With - Without EMA, paired "
        "per (checkpoint, seed) and averaged, from unrounded values (negative: EMA better), "
        f"with its 95% interval; {SIGNIFICANT_MARK} = the interval excludes 0. At \"best\" "
        "each weight set is at its own best epoch (paired by seed; the choice of the best "
        "epochs is not accounted for).",
        f"Final epoch (last evaluated): {finals}.",
    ]
    for series, part in summary.groupby("series", sort=False):
        raw = _seeds(part.loc[part["variant"] == "raw", "seeds"])
        ema = _seeds(part.loc[part["variant"] == variant, "seeds"])
        if raw and ema and raw != ema:
            notes.append(f"{series}: Without EMA averages seeds {raw}, With EMA seeds {ema}: "
                         f"{GAIN_COLUMN} pairs only the seeds both have.")
    if table.apply(lambda col: col.str.contains(LOW_MARK)).any().any():
        notes.append(f"{LOW_MARK} EMA still mostly initial weights (post-init share < 0.5) "
                     "in at least one seed: that FID reflects the initialisation, not training.")
    for series, result in table.attrs.get("results", {}).items():
        if variant is not None:
            notes.append(_significance(series, variant, result))
            plateau = _plateau(series, variant, result)
            notes += [plateau] if plateau else []
    return [f"- {n}" for n in notes] + [""]


def _print_table(title: str, table: pd.DataFrame) -> None:
    print(f"\n{title}\n{to_markdown(table)}")


def _protocol_section(
    study: Study, summary: pd.DataFrame, protocol: str, out: Path, folder: Path,
    formats: Sequence[str], several: bool,
) -> list[str]:
    """Tables and FID figure of one protocol, written under ``folder``; its report lines."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"## FID protocol: {protocol}", ""]
    lines += [f"> {SPLIT_NOTE}", ""] if several else []
    lines += _protocol_header(study, protocol, summary)
    for variant in variants(summary) or [None]:
        title = f"Results: {variant}" if variant else "Results (no EMA rows)"
        table = results_table(summary, variant)
        weights_id = summary.loc[summary["variant"] == variant, "weights_id"]
        stem = "results_" + (weights_id.iloc[0].replace("@", "") if variant else "raw")
        files = write_table(table, folder / stem)
        _print_table(f"{title} [{protocol}]", table)
        lines += [f"### {title}", "", to_markdown(table), ""]
        lines += _results_notes(table, summary, variant)
        lines += [_file_links(files, out), ""]
    by_epoch = epoch_table(summary)
    files = write_table(by_epoch, folder / "fid_by_epoch")
    _print_table(f"Metrics by epoch [{protocol}]", by_epoch)
    summary.drop(columns=["units", "boots"]).assign(
        seeds=summary["seeds"].map(_seeds), sample_seeds=summary["sample_seeds"].map(_seeds)
    ).to_csv(folder / "fid_summary.csv", index=False)
    fid_columns = [c for c in by_epoch.columns if not c.endswith(_OTHER_SUFFIXES)]
    lines += ["### FID by epoch", "", to_markdown(by_epoch[fid_columns]), ""]
    if len(fid_columns) < len(by_epoch.columns):
        lines += ["### KID, precision and recall by epoch", "",
                  "KID: like FID, lower is better. Precision: share of generated images that "
                  "fall among real ones (fidelity); recall: share of real images that fall "
                  "among generated ones (diversity); higher is better for both. A longer EMA "
                  "is reported to trade recall for precision.", ""]
        for suffix in _OTHER_SUFFIXES:
            names = {c: c.removesuffix(suffix) for c in by_epoch.columns if c.endswith(suffix)}
            if not names:
                continue
            part = by_epoch[list(names)].rename(columns=names)
            lines += [f"**{suffix.strip()}**", "", to_markdown(part), ""]
    lines += [_file_links(files + [folder / "fid_summary.csv"], out), ""]
    figure = _save(fid_figure(summary, f"FID vs epoch · {protocol}"), folder / "fid_vs_epoch",
                   formats)
    lines += _figure_links(figure, out, "FID vs epoch (raw solid, EMA dashed, ± std over seeds)")
    figure = _save(prc_figure(summary, f"Precision and recall vs epoch · {protocol}"),
                   folder / "prc_vs_epoch", formats)
    lines += _figure_links(figure, out, "Precision and recall vs epoch (raw solid, EMA dashed)")
    return lines


_OTHER_SUFFIXES = (" KID×10³", " precision", " recall")


def _check_formats(formats: Sequence[str]) -> list[str]:
    supported = Figure().canvas.get_supported_filetypes()
    unknown = [f for f in formats if f not in supported]
    if unknown:
        raise FormatError(f"formats: unknown figure format(s) {unknown}; "
                         f"choose from {sorted(supported)}")
    return list(formats)


def make_report(
    study_dir: str | Path | None = None,
    runs: Iterable[str | Path] | None = None,
    out: str | Path | None = None,
    formats: Sequence[str] = ("png", "pdf"),
) -> Path:
    """Write tables, figures and report.md for the runs below ``study_dir`` and/or in
    ``runs``; returns the path of report.md.

    ``out`` defaults to ``<study_dir>/report``, or ``outputs/report`` with ``runs`` only.
    Missing pieces are listed in report.md and logged as warnings; only finding no run at
    all is an error (NoRunsFoundError, naming the folders searched).
    """
    formats = _check_formats(formats)
    study = load_study(study_dir, runs)
    if out is None:
        out = Path(study_dir) / "report" if study_dir else Path("outputs/report")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    summary = summarize(dedupe_networks(study.fid))
    missing = find_missing(study, summary)
    for message in missing:
        log.warning("missing: %s", message)

    protocols = list(summary["protocol"].drop_duplicates())
    several = len(protocols) > 1
    source = ", ".join(str(p) for p in ([study_dir] if study_dir else []) + list(runs or []))
    lines = [
        "# Baseline vs LIFT EMA study: report", "",
        f"Made by `python -m analysis.report` from {len(study.runs)} runs in {source} "
        f"({int((study.runs['eval_rows'] > 0).sum())} evaluated).", "",
        "Every FID is read within its protocol (dataset, image size, number of images, "
        "sampling steps, extractor, real subset), stated at the head of its section.", "",
    ]
    if several:
        lines += [f"**{len(protocols)} FID protocols.** {SPLIT_NOTE}", ""]
    lines += ["## Runs", "", *_runs_table(study.runs), "## Missing", ""]
    lines += [f"- {m}" for m in missing] or ["Nothing missing."]
    lines += [""]
    for protocol in protocols:
        folder = out / _slug(protocol) if several else out
        part = summary[summary["protocol"] == protocol]
        lines += _protocol_section(study, part, protocol, out, folder, formats, several)
    if not protocols:
        lines += ["## FID", "", "No FID rows yet: see Missing.", ""]

    lines += ["## Training", ""]
    loss = _save(training_figure(study.metrics), out / "training_loss", formats)
    lines += _figure_links(loss, out, "Training loss vs epoch")
    diagnostics = ema_diagnostics(study.metrics) if not study.metrics.empty else pd.DataFrame()
    ema = _save(ema_figure(diagnostics), out / "ema_diagnostics", formats)
    lines += _figure_links(ema, out, "EMA diagnostics vs step")
    if not loss and not ema:
        lines += ["No training metrics yet: see Missing.", ""]

    report = out / REPORT_FILE
    report.write_text("\n".join(lines))
    return report


def _run(cfg: DictConfig) -> None:
    """CLI: ``python -m analysis.report study_dir=... | runs=[...] [out=...]``."""
    runs = cfg.runs
    # runs=outputs/a (one folder, no brackets) arrives as a string, not a list.
    runs = [runs] if isinstance(runs, str) else OmegaConf.to_container(runs) if runs else None
    report = make_report(cfg.study_dir, runs, cfg.out, tuple(cfg.formats))
    log.info("report: %s", report)


if __name__ == "__main__":
    from explore.cli import hydra_entry

    hydra_entry("report", _run, logger="analysis.report")()
