"""`<run>/eval/fid.csv`: one row per (epoch, weights, path, protocol), rewritten atomically after
every finished row, so an interrupted evaluation loses no finished row and never leaves half a
file."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .files import write_text

COLUMNS = ["run", "model", "seed", "ema_decay", "dataset", "image_size", "epoch", "step",
           "weights", "path", "num_steps", "num_images", "extractor", "schedule", "final_step",
           "fid", "ema_share", "ema_share_low", "lag_epochs", "seconds"]
# what makes two rows the same measurement (the protocol is part of it: a number made with
# another extractor, image count, step count, noise schedule or final DDIM step is another row,
# never a replacement)
KEY = ("epoch", "weights", "path", "num_steps", "num_images", "extractor", "schedule",
       "final_step")
# rows written before these columns existed were all made with the unclipped cosine schedule
# and a last DDIM step to alpha_bar 1
LEGACY = {"schedule": "cosine", "final_step": "alpha_one"}


def row_key(row: dict) -> tuple[str, ...]:
    return tuple(str(row[k]) for k in KEY)


class ResultsFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict] = []
        if self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = [{**LEGACY, **{k: v for k, v in r.items() if v or k not in LEGACY}}
                             for r in csv.DictReader(f)]

    def has(self, key: tuple[str, ...]) -> bool:
        return any(row_key(r) == key for r in self.rows)

    def add(self, row: dict) -> None:
        """Add a row (replacing one with the same key) and rewrite the file."""
        key = row_key(row)
        self.rows = [r for r in self.rows if row_key(r) != key] + [row]
        self.rows.sort(key=lambda r: (int(r["epoch"]), str(r["weights"]), str(r["path"])))
        columns = COLUMNS + sorted({k for r in self.rows for k in r} - set(COLUMNS))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buf.getvalue())
