"""The images evaluation and training leave in run folders, for the report's "Samples" section.

Evaluation writes ``eval/grids/epoch_NNNN_<weights>_<path>[_s<seed>].png`` (one grid per row;
``..._copies.png`` are memorisation pairs, not samples) and ``eval/heatmaps/epoch_NNNN_<weights>_
<...>.png`` (LIFT's error heatmaps); training writes ``samples/epoch_NNNN.png`` (raw and EMA
side by side). Numbers alone hide what a FID difference looks like, so the report shows, per run,
raw next to every averaged weight set at the run's best and final epochs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from explore.ema.names import parse_weights
from explore.run.folder import GRIDS_DIR, HEATMAPS_DIR, SAMPLES_DIR

from ..stats.seeds import variant_rank

# weight-set names hold no "_" (raw, ema, ema@0.999, phema@0.05); sampling paths may (dp_total)
_GRID = re.compile(r"^epoch_(\d+)_([^_]+)_(.+?)(?:_s(\d+))?$")
_HEATMAP = re.compile(r"^epoch_(\d+)_([^_]+)_")
_SAMPLES = re.compile(r"^epoch_(\d+)$")


@dataclass(frozen=True)
class Picture:
    epoch: int
    column: str     # "raw", "ema@0.99 dp_total", ...: the table column it goes in
    order: tuple    # sort key of the column (raw first, then EMA by decay, post-hoc EMA)
    file: Path


def _weights_order(weights: str) -> tuple:
    parsed = parse_weights(weights)
    return variant_rank(parsed.kind, parsed.decay, parsed.label)


def eval_grids(run_dir: Path) -> list[Picture]:
    """Evaluation's sample grids (the lowest sampling seed of each row; no copies grids)."""
    found: dict[tuple, tuple[int, Path]] = {}
    for file in sorted((run_dir / GRIDS_DIR).glob("epoch_*.png")):
        m = _GRID.match(file.stem)
        if m is None or file.stem.endswith("_copies"):
            continue
        key = (int(m[1]), m[2], m[3])
        seed = int(m[4]) if m[4] else -1
        if key not in found or seed < found[key][0]:
            found[key] = (seed, file)
    return [Picture(e, f"{w} {p}", (_weights_order(w), p), f)
            for (e, w, p), (_, f) in found.items()]


def heatmap_images(run_dir: Path) -> list[Picture]:
    """Evaluation's heatmap images (LIFT runs)."""
    out = []
    for file in sorted((run_dir / HEATMAPS_DIR).glob("epoch_*.png")):
        m = _HEATMAP.match(file.stem)
        if m:
            out.append(Picture(int(m[1]), m[2], (_weights_order(m[2]), ""), file))
    return out


def training_samples(run_dir: Path) -> list[Picture]:
    """Training's sample images (raw and EMA in one picture)."""
    out = []
    for file in sorted((run_dir / SAMPLES_DIR).glob("epoch_*.png")):
        m = _SAMPLES.match(file.stem)
        if m:
            out.append(Picture(int(m[1]), "raw and EMA (training samples)", (0,), file))
    return out


def sample_epochs(rows: pd.DataFrame, available: set[int]) -> dict[int, str]:
    """epoch -> why it is shown: the best raw and best averaged epochs (lowest FID of the
    run) and the final one; without FID rows, the last epoch with pictures."""
    rows = rows.dropna(subset=["fid"])
    chosen: dict[int, list[str]] = {}
    if not rows.empty:
        raw, avg = rows[rows["kind"] == "raw"], rows[rows["kind"] != "raw"]
        for label, part in [("best raw", raw), ("best EMA", avg)]:
            if not part.empty:
                chosen.setdefault(int(part.loc[part["fid"].idxmin(), "epoch"]), []).append(label)
        chosen.setdefault(int(rows["epoch"].max()), []).append("final")
    elif available:
        chosen[max(available)] = ["last"]
    return {e: ", ".join(why) for e, why in sorted(chosen.items())}


def _picture_table(pictures: list[Picture], epochs: dict[int, str], out: Path,
                   run: str) -> list[str]:
    """A Markdown table: one row per chosen epoch, one column per weight set (and path)."""
    shown = [p for p in pictures if p.epoch in epochs]
    if not shown:
        return []
    columns = sorted({(p.order, p.column) for p in shown})
    cell = {(p.epoch, p.column): p.file for p in shown}
    lines = ["| epoch | " + " | ".join(c for _, c in columns) + " |",
             "|:---|" + ":---:|" * len(columns)]
    for epoch, why in epochs.items():
        cells = []
        for _, column in columns:
            file = cell.get((epoch, column))
            rel = Path(os.path.relpath(file, out)).as_posix() if file else None
            cells.append(f"![{run} epoch {epoch} {column}]({rel})" if rel else "")
        lines.append(f"| {epoch} ({why}) | " + " | ".join(cells) + " |")
    return lines + [""]


def samples_section(study, out: Path) -> list[str]:
    """The report's "Samples" section: per run, evaluation's grids (or, without them,
    training's samples) and heatmaps at the best and final epochs; empty when no run has any
    picture."""
    lines = []
    for run in study.runs.itertuples():
        run_dir = Path(run.dir)
        grids = eval_grids(run_dir) or training_samples(run_dir)
        heatmaps = heatmap_images(run_dir)
        epochs = sample_epochs(study.fid[study.fid["run"] == run.run],
                               {p.epoch for p in grids + heatmaps})
        grid_lines = _picture_table(grids, epochs, out, run.run)
        heat_lines = _picture_table(heatmaps, epochs, out, run.run)
        if not grid_lines and not heat_lines:
            continue
        lines += [f"### {run.run}", ""]
        lines += (["Sample grids:", "", *grid_lines] if grid_lines else [])
        lines += (["Error heatmaps:", "", *heat_lines] if heat_lines else [])
    if not lines:
        return []
    return ["## Samples", "",
            "Raw next to every averaged weight set, at each run's best epochs (lowest FID of "
            "its raw and of its averaged weights) and final epoch; the images evaluation "
            "wrote (eval/grids, eval/heatmaps), else training's samples/.", "", *lines]
