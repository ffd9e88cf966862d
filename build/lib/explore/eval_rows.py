"""What one row of `<run>/eval/fid.csv` holds beyond its key: the sampling seeds rows are made
for, which metrics an existing row still lacks, and the metric values of a row from its
generated images' features (explore.evaluate calls these for every row).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig

from . import metrics as metriclib
from .errors import ConfigError
from .runfiles import METRIC_COLUMNS, format_replicates, parse_replicates

if TYPE_CHECKING:
    from .evaluate import EvalContext

DEFAULT_SEED = 42  # eval.seeds' default (conf/eval/default.yaml): what rows without a seed used


def sample_seeds(e: DictConfig) -> list[int]:
    """eval.seeds, or [eval.seed] when that older key is given (eval.seed=N = eval.seeds=[N])."""
    seeds = e.get("seeds")
    seeds = [DEFAULT_SEED] if seeds is None else (
        [seeds] if isinstance(seeds, int) else list(seeds))
    if e.get("seed") is not None:
        if seeds not in ([DEFAULT_SEED], [int(e.seed)]):
            raise ConfigError(f"eval.seed={e.seed} and eval.seeds={seeds}: give one of them "
                              f"(eval.seed=N is eval.seeds=[N])")
        seeds = [int(e.seed)]
    try:
        out = list(dict.fromkeys(int(s) for s in seeds))
    except (TypeError, ValueError):
        raise ConfigError(f"eval.seeds={seeds}: a list of integers, e.g. [0,1,2]") from None
    if not out or any(s < 0 for s in out):
        raise ConfigError(f"eval.seeds={seeds}: one or more integers >= 0, e.g. [0,1,2]")
    return out


def check_metric_options(e: DictConfig) -> None:
    """eval.seeds / eval.seed, eval.metrics and eval.bootstrap, with messages that name them."""
    sample_seeds(e)
    if not e.metrics:
        raise ConfigError("eval.metrics is empty: name at least one of fid, kid, prc, memorization")
    try:
        metriclib.check_metrics(list(e.metrics))
    except ValueError as err:
        raise ConfigError(f"eval.metrics: {err}") from None
    if int(e.bootstrap) < 0:
        raise ConfigError(f"eval.bootstrap={e.bootstrap} must be >= 0 (0: no bootstrap)")


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
    """The share of generated images that copy a training image (explore.memorization), in the
    extractor's feature space against every training image; with eval.memorization_pixels also
    in pixel space; and the 8 closest pairs as a grid under eval/grids/."""
    from .memorization import nearest_two, pair_grid, pixels

    near = nearest_two(feats, ctx.train_set.features, device=ctx.device)
    out = {"memorization": round(near.rate(), 6)}
    if images is not None:
        train = ctx.data.images
        if bool(ctx.e.get("memorization_pixels")):
            out["memorization_px"] = round(
                nearest_two(pixels(images), pixels(train), device=ctx.device).rate(), 6)
        if key is not None:
            from .evaluate import write_uint8_image

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
