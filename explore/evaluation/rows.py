"""What one row of `<run>/eval/fid.csv` holds beyond its key: the metric values of a row from its
generated images' features, and the memorisation columns (explore.evaluation.loop calls these
for every row).
"""

from __future__ import annotations

import torch

from explore.evaluation import metrics as metriclib
from explore.evaluation.context import EvalContext
from explore.evaluation.memorization import nearest_two, pair_grid, pixels
from explore.run.images import write_uint8_image
from explore.run.results import format_replicates


def measure_row(ctx: EvalContext, feats: torch.Tensor, seed: int, old: dict | None,
                images: torch.Tensor | None = None, key: dict | None = None) -> dict:
    """The metric columns of a row from its generated features: every metric of eval.metrics
    (only those the row `old` lacks, when completing one), and the bootstrap replicates.
    `images` (None when completing from kept features) serve memorisation's pixel space and
    its closest-pairs grid (`key`: the row's key, for the grid's name)."""
    lacking = ctx.missing(old)
    wanted = [m for m in ctx.metrics if old is None or m in lacking]
    values = metriclib.measure(feats, ctx.real_set, wanted)
    out = {k: round(v, 4) if k == "fid" else round(v, 6) for k, v in values.items()}
    if "memorization" in wanted:
        out.update(memorization_columns(ctx, feats, images, key))
    if ctx.bootstrap and (old is None or "bootstrap" in lacking):
        if ctx.boot is None:  # sqrt of the real covariance: once per evaluation
            ctx.boot = metriclib.FidBootstrap(ctx.real_set.stats, device=ctx.device)
        boot_seed = int(ctx.e.bootstrap_seed)
        idx = metriclib.bootstrap_indices(len(feats), ctx.bootstrap, boot_seed, seed)
        out["boot_seed"] = boot_seed
        out["fid_boot"] = format_replicates(ctx.boot.replicates(feats, idx))
    return out


def memorization_columns(ctx: EvalContext, feats: torch.Tensor, images: torch.Tensor | None,
                         key: dict | None) -> dict:
    """The share of generated images that copy a training image
    (explore.evaluation.memorization), in the extractor's feature space against every training
    image; with eval.memorization_pixels also in pixel space; and the 8 closest pairs as a grid
    under eval/grids/."""
    near = nearest_two(feats, ctx.train_set.features, device=ctx.device)
    out = {"memorization": round(near.rate(), 6)}
    if images is not None:
        train = ctx.data.images
        if ctx.e.memorization_pixels:
            out["memorization_px"] = round(
                nearest_two(pixels(images), pixels(train), device=ctx.device).rate(), 6)
        if key is not None:
            path = ctx.run.copies_grid(key["epoch"], key["weights"], key["path"],
                                       key["sample_seed"])
            write_uint8_image(pair_grid(images, train, near), path)
    return out


def describe_values(row: dict) -> str:
    """"FID 12.345 KID 0.0123 ± 0.0010 P 0.712 R 0.645" from a row's metric columns."""
    parts = []
    if row.get("fid") not in (None, ""):
        parts.append(f"FID {float(row['fid']):.3f}")
    if row.get("kid") not in (None, ""):
        parts.append(f"KID {float(row['kid']):.4f} ± {float(row['kid_std']):.4f}")
    if row.get("precision") not in (None, ""):
        parts.append(f"P {float(row['precision']):.3f} R {float(row['recall']):.3f}")
    if row.get("memorization") not in (None, ""):
        parts.append(f"copies {100 * float(row['memorization']):.1f}%")
    return " ".join(parts)
