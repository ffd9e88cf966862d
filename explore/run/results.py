"""`<run>/eval/fid.csv`: one row per measurement, its columns and key, and the file that keeps
rows from several evaluations at once (`ResultsFile`).

No torch import: analysis/ uses it without loading torch.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from explore.core.files import exclusive, write_text
from explore.run.folder import ENVIRONMENTS_FILE_NAME

FID_COLUMNS = ["run", "model", "seed", "ema_decay", "dataset", "image_size", "epoch", "step",
               "weights", "path", "sample_seed", "num_steps", "num_images", "num_real",
               "subset_seed", "extractor", "extractor_weights", "schedule", "final_step", "fid",
               "kid", "kid_std",
               "precision", "recall", "memorization", "memorization_px", "ema_share",
               "ema_share_low", "lag_epochs", "sigma_rel", "half_life_kimg", "seconds",
               "boot_seed", "fid_boot", "environment"]
# `seed` is the training seed (the run's), `sample_seed` the sampling seed of the generated
# images (eval.seeds); `num_real` real images, a subset of the training images drawn with
# `subset_seed` (eval.subset_seed; all of them when num_images >= the training set).
# `extractor_weights`: which weights the extractor ran with (explore.evaluation.features
# .weights_id: the packaged FID network's id, or a weights file's name and sha256; "" for
# randconv-256, which has no weights file).
# `environment`: the id of the software and machine that made the row (explore.run.environment;
# its record in eval/environments.json).
# `fid_boot`: bootstrap replicate FIDs over the generated images' features (space-separated;
# `replicates`), made with resample indices drawn from `boot_seed`, the sampling seed and the
# image count only, so replicate b of every weight set and epoch resamples the same images.
#
# what makes two rows the same measurement. The protocol is part of it: a number made with
# another extractor, image count, step count, noise schedule, final DDIM step or real subset is
# another row, never a replacement; so is one made from another sampling seed.
FID_KEY = ("epoch", "weights", "path", "sample_seed", "num_steps", "num_images", "extractor",
           "extractor_weights", "schedule", "final_step", "subset_seed")
# the protocol: numbers made under different values of these are never compared (STUDY.md)
PROTOCOL_COLUMNS = ["dataset", "image_size", "num_images", "num_steps", "extractor",
                    "extractor_weights", "schedule", "final_step", "subset_seed"]
# rows written before these columns existed were made with the unclipped cosine schedule, a
# last DDIM step to alpha_bar 1, and eval.seed 42 (the default), which then also drew the real
# subset
LEGACY_VALUES = {"schedule": "cosine", "final_step": "alpha_one", "sample_seed": "42",
                 "subset_seed": "42", "extractor_weights": ""}
# eval.metrics -> the columns each fills
METRIC_COLUMNS = {"fid": ("fid",), "kid": ("kid", "kid_std"), "prc": ("precision", "recall"),
                  "memorization": ("memorization",)}


def format_replicates(values) -> str:
    """Bootstrap replicates as fid.csv holds them: space-separated, 4 decimals."""
    return " ".join(f"{float(v):.4f}" for v in values)


def parse_replicates(text) -> list[float]:
    """The replicates of a `fid_boot` cell ([] when empty or unreadable)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    try:
        return [float(v) for v in str(text).split()]
    except ValueError:
        return []


def fid_row_key(row: dict) -> tuple[str, ...]:
    return tuple(str(row[k]) for k in FID_KEY)


class ResultsFile:
    """`<run>/eval/fid.csv`, rewritten atomically after every finished row, so an interrupted
    evaluation loses no finished row and never leaves half a file.

    Several evaluations of one run folder may run at once (two terminals, a study re-run, more
    seeds added while a SLURM evaluation runs): each `add` takes an OS lock on `fid.csv.lock`,
    re-reads the file, adds its row and writes the whole file before letting the next writer
    in, so every process keeps every row the others wrote (a read-once, write-from-memory file
    would keep only the last writer's rows). The environments rows name (`environment` column)
    are merged into `eval/environments.json` under the same lock.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.environments_path = self.path.with_name(ENVIRONMENTS_FILE_NAME)
        self.rows: list[dict] = []
        self.refresh()

    def refresh(self) -> None:
        """Re-read the rows from disk (another evaluation may have added some)."""
        self.rows = read_results(self.path)

    def has(self, key: tuple[str, ...]) -> bool:
        return self.get(key) is not None

    def get(self, key: tuple[str, ...]) -> dict | None:
        """The row with this key (fid_row_key), or None."""
        return next((r for r in self.rows if fid_row_key(r) == key), None)

    def add(self, row: dict, environment: dict | None = None) -> None:
        """Add a row (replacing one with the same key) to what is on disk now, and rewrite the
        file; `environment`: the record of the row's `environment` id, kept beside it."""
        key = fid_row_key(row)
        with exclusive(self.lock_path):
            rows = [r for r in read_results(self.path) if fid_row_key(r) != key] + [row]
            rows.sort(key=lambda r: (int(r["epoch"]), str(r["weights"]), str(r["path"]),
                                     int(r["sample_seed"])))
            columns = FID_COLUMNS + sorted({k for r in rows for k in r} - set(FID_COLUMNS))
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            write_text(self.path, buf.getvalue())
            if environment is not None:
                known = read_json(self.environments_path) or {}
                if environment.get("id") not in known:
                    known[environment["id"]] = environment
                    write_text(self.environments_path, json.dumps(known, indent=2))
        self.rows = rows


def read_results(path: str | Path) -> list[dict]:
    """The rows of a fid.csv (legacy protocol values filled in); [] when there is none."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [with_legacy_values(r) for r in csv.DictReader(f)]


def read_json(path: str | Path):
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def with_legacy_values(row: dict) -> dict:
    """A fid.csv row with the protocol values rows from before their column had."""
    return {**row, **{k: v for k, v in LEGACY_VALUES.items() if not row.get(k)}}


def missing_parts(row: dict | None, metrics: list[str], bootstrap: int, boot_seed: int
                  ) -> list[str]:
    """What an existing row lacks of `metrics` (and of `bootstrap` replicates drawn with
    `boot_seed`), or ["row"] when there is none; [] when it is complete."""
    if row is None:
        return ["row"]
    lacking = [m for m in metrics if any(row.get(c) in (None, "") for c in METRIC_COLUMNS[m])]
    if bootstrap and not (len(parse_replicates(row.get("fid_boot"))) == bootstrap
                          and str(row.get("boot_seed")) == str(boot_seed)):
        lacking.append("bootstrap")
    return lacking
