"""How far two feature extractors agree, on the same generated images.

A row scored with two extractors (randconv-256 and Inception, say) at the same run, epoch,
weight set, sampling path and seed, image count and protocol was computed from the same
generated images (sampling is deterministic for a seed), so the two FIDs differ only by the
extractor. Over every such (checkpoint, weight set):

- rank agreement: Spearman's rho and Kendall's tau-b between the two extractors' FIDs (1: the
  same order; a download-free extractor that ranks checkpoints and weight sets as Inception
  does answers the study's comparative questions the same way);
- verdict agreement: for every EMA-like weight set, the sign of the paired EMA - raw difference
  at its checkpoint and seed under each extractor: the same sign, or not (listed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from scipy import stats

# the columns that name one set of generated images (apart from the extractor)
SAME_IMAGES = ["run", "epoch", "weights", "path", "sample_seed", "num_images", "num_steps",
               "schedule", "final_step", "subset_seed", "dataset", "image_size"]


@dataclass
class Agreement:
    first: str                    # extractor names, e.g. randconv-256
    second: str                   # ... and inception-v3-compat
    pairs: pd.DataFrame           # one row per (checkpoint, weight set): fid_<first>, fid_<second>
    spearman: float
    kendall: float
    verdicts: pd.DataFrame        # one row per (checkpoint, EMA-like weight set): both signs
    disagree: list[str] = field(default_factory=list)

    @property
    def same_sign(self) -> int:
        return int((self.verdicts["agree"]).sum())


def extractor_agreement(fid: pd.DataFrame) -> list[Agreement]:
    """One `Agreement` per pair of extractors that scored some of the same images."""
    if fid.empty or "extractor" not in fid:
        return []
    rows = fid.dropna(subset=["fid"])
    extractors = sorted(rows["extractor"].dropna().unique(), key=lambda e: (e != "randconv-256",
                                                                               e))
    out = []
    for i, first in enumerate(extractors):
        for second in extractors[i + 1:]:
            found = _agreement(rows, first, second)
            if found is not None:
                out.append(found)
    return out


def _agreement(rows: pd.DataFrame, first: str, second: str) -> Agreement | None:
    keys = [k for k in SAME_IMAGES if k in rows]
    a = rows[rows["extractor"] == first].groupby(keys, dropna=False)["fid"].mean()
    b = rows[rows["extractor"] == second].groupby(keys, dropna=False)["fid"].mean()
    pairs = pd.concat({first: a, second: b}, axis=1).dropna().reset_index()
    if len(pairs) < 3:
        return None
    rho = float(stats.spearmanr(pairs[first], pairs[second]).statistic)
    tau = float(stats.kendalltau(pairs[first], pairs[second]).statistic)
    group = [k for k in keys if k != "weights"]
    raw = pairs[pairs["weights"] == "raw"][group + [first, second]]
    ema = pairs[pairs["weights"] != "raw"]
    joined = ema.merge(raw, on=group, how="inner", suffixes=("", "_raw"))
    verdicts = pd.DataFrame({
        "run": joined["run"], "epoch": joined["epoch"], "weights": joined["weights"],
        f"{first}": joined[first] - joined[f"{first}_raw"],
        f"{second}": joined[second] - joined[f"{second}_raw"]})
    verdicts["agree"] = (verdicts[first] > 0) == (verdicts[second] > 0)
    disagree = [f"{r['run']} epoch {int(r['epoch'])} {r['weights']}: EMA - raw "
                f"{r[first]:+.3g} with {first}, {r[second]:+.3g} with {second}"
                for _, r in verdicts[~verdicts["agree"]].iterrows()]
    return Agreement(first, second, pairs, rho, tau, verdicts, disagree)
