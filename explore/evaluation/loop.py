"""Scoring every checkpoint of a run, for the raw weights and every average it holds.

    results = evaluate(settings)        # explore.evaluate builds `settings` from the config

For each (checkpoint, weight set, sampling path, sampling seed of `eval.seeds`): sample
`eval.num_images` images with DDIM (Baseline: `ddim`; LIFT: `diagonal`, `dp_64`, `dp_total`, the
DP paths from that checkpoint's and weight set's error heatmap), extract their features once and
compute every metric of `eval.metrics` from them (explore.evaluation.metrics) against as many
training images, add a row to `<run>/eval/fid.csv` and write a 9x9 sample grid. Rows already
there are skipped unless eval.force=true, so an interrupted evaluation resumes where it stopped,
and more seeds or metrics later add only what is missing (a row lacking a metric is completed
from its kept features, `eval.keep_features=true`, else sampled again). Sampling uses the noise
schedule the run was trained with (`explore.nets.diffusion.schedule_of`).

Pairing: for a sampling seed, every weight set of a checkpoint starts from the same initial noise
(`explore.nets.sampling.initial_noise`), so raw and EMA rows differ only by their weights. The
real subset and the heatmap's images and probes use `eval.subset_seed`, never the sampling seed.
With one sampling seed, `eval.bootstrap` replicate FIDs per row
(explore.evaluation.metrics.FidBootstrap).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch

from explore.core.config import build, upgrade_targets
from explore.core.devices import resolve_device
from explore.core.errors import ConfigError
from explore.core.files import fmt_bytes, remove_stale_temporaries
from explore.evaluation import features as fidlib
from explore.evaluation import metrics as metriclib
from explore.evaluation.context import EvalContext
from explore.evaluation.rows import describe_values, measure_row
from explore.evaluation.settings import EvalSettings
from explore.evaluation.weights import (
    WeightSet,
    load_state,
    load_weights,
    reconstructed_sets,
    select,
    weight_sets,
)
from explore.lift.paths import cached_heatmap, lift_path, paths_for
from explore.nets.data import ImageSet, grid_image, subset
from explore.nets.diffusion import schedule_of
from explore.nets.sampling import sample_baseline, sample_lift
from explore.run import checkpoint as ckpt
from explore.run.environment import describe as describe_env
from explore.run.environment import describe_environment
from explore.run.folder import RunFolder, epoch_from_name
from explore.run.images import write_uint8_image
from explore.run.info import RunInfo, read_run_info, write_run_info
from explore.run.logfile import log_to
from explore.run.loggers import run_loggers
from explore.run.results import ResultsFile, fid_row_key

log = logging.getLogger("explore.evaluate")

GRID_IMAGES = 81  # a 9x9 sample grid per row


# -- what to evaluate ---------------------------------------------------------------------------
def find_checkpoints(settings: EvalSettings) -> tuple[RunFolder, list[tuple[int, Path]]]:
    """The run folder and its checkpoints (run_dir=), or one file and the folder its results go
    to (checkpoint=); eval.epochs narrows them."""
    if settings.run_dir:
        run = RunFolder(settings.run_dir)
        if not run.path.is_dir():
            raise ConfigError(f"run_dir={run.path} does not exist")
        found = run.checkpoints()
        if not found:
            raise ConfigError(f"run_dir={run.path} has no checkpoints "
                              f"({run.checkpoint_dir}/epoch_NNNN.pt): train it first")
    else:
        path = Path(settings.checkpoint)
        run = RunFolder(settings.out_dir or Path("outputs") / "eval" / path.stem)
        found = [(epoch_from_name(path), path)]  # None: read from the file (`prepare`)
    if settings.eval.epochs:
        wanted = {int(x) for x in settings.eval.epochs}
        have = {ep for ep, _ in found}
        if wanted - have:
            raise ConfigError(f"eval.epochs asks for {sorted(wanted - have)}, but the "
                              f"checkpoints are for epochs {sorted(have)}")
        found = [(ep, p) for ep, p in found if ep in wanted]
    return run, found


def build_model(state: dict, asked: dict | None, source: Path) -> torch.nn.Module:
    """The checkpoint's own model config if it has one; else `asked` (model= from the command
    line), with the original study's `hidden_dims` when the checkpoint records them. A model=
    that contradicts the checkpoint's own config is an error naming both."""
    stored = upgrade_targets((state.get("config") or {}).get("model"))
    if stored and asked and asked.get("_target_") != stored.get("_target_"):
        raise ConfigError(f"model={asked['_target_'].rsplit('.', 1)[-1]} was asked for, but "
                          f"{source} holds a {stored['_target_'].rsplit('.', 1)[-1]} (its "
                          f"stored config): drop model= or pick the right checkpoint")
    if stored:
        return build(stored)
    if not asked:
        raise ConfigError(f"{source} does not say which model it holds: add model=lift or "
                          f"model=baseline")
    model_cfg = dict(asked)
    if "hidden_dims" in state:
        model_cfg["hidden_dims"] = list(state["hidden_dims"])
    return build(model_cfg)


def load_data(state: dict, asked: dict | None) -> tuple[ImageSet, dict]:
    """Training images of the run (its stored data config), else `asked` (data= from the
    command line)."""
    data_cfg = upgrade_targets((state.get("config") or {}).get("data")) or asked
    if not data_cfg:
        raise ConfigError("the checkpoint does not say what it was trained on: add "
                          "data=folder data.root=/path/to/training/images (or data=afhq)")
    return build(data_cfg), data_cfg


def resolve_extractor(name: str, data_cfg: dict) -> str:
    """auto: Inception for real data; the download-free extractor for the embedded shapes."""
    if name == "auto":
        return (fidlib.RANDCONV_NAME if str(data_cfg.get("_target_", "")).endswith(".shapes")
                else fidlib.INCEPTION_NAME)
    return fidlib.check_extractor(name)


def checkpoint_info(run: RunFolder, state: dict, data: ImageSet, epoch: int) -> RunInfo:
    """A RunInfo read off a lone checkpoint (no run.json): the original study's checkpoints
    have no config, so its training batch (64) gives the optimizer steps per epoch."""
    ema_state = state.get("ema_state") or {}
    run_cfg = state.get("config") or {}
    kind = state.get("model_kind") or ("lift" if any(k.startswith("time_combine")
                                                     for k in state["model_state"]) else
                                       "baseline")
    decay = ema_state.get("decay", state.get("ema_decay"))
    batch = int((run_cfg.get("trainer") or {}).get("batch_size", 64))
    return RunInfo(run=run.name, model=kind, seed=run_cfg.get("seed"), ema_decay=decay,
                   ema_decays=[decay] if decay else [], dataset=data.name,
                   image_size=data.image_size, num_images=len(data), epochs=epoch,
                   steps_per_epoch=len(data) // batch, batch_size=batch, source="checkpoint")


def newest_readable(checkpoints: list[tuple[int, Path]], trusted: bool
                    ) -> tuple[dict, dict[Path, str]]:
    """The newest checkpoint that loads (its state sets the evaluation up: model and data
    config), and the newer ones that do not (path -> why). None loads: the newest's error."""
    errors: dict[Path, ckpt.CheckpointError] = {}
    for _, path in reversed(checkpoints):
        try:
            return (ckpt.load_checkpoint(path, trusted=trusted),
                    {p: str(e) for p, e in errors.items()})
        except ckpt.CheckpointError as e:
            errors[path] = e
    if len(errors) > 1:
        raise ckpt.CheckpointError(f"none of the {len(errors)} checkpoints can be read: "
                                   + "; ".join(map(str, errors.values())))
    raise next(iter(errors.values()))


def prepare(settings: EvalSettings) -> tuple[EvalContext, dict]:
    """The evaluation context, and the newest readable checkpoint's state (loaded once,
    reused)."""
    e = settings.eval
    device = resolve_device(settings.device)
    run, checkpoints = find_checkpoints(settings)
    trusted = settings.trust_checkpoint
    last, unreadable = newest_readable(checkpoints, trusted)
    if checkpoints[-1][0] is None:  # a lone file named without its epoch: the file says
        checkpoints = [(int(last.get("epoch", last.get("epochs", -1))), checkpoints[-1][1])]
    data, data_cfg = load_data(last, settings.data)
    num_images = int(e.num_images) if e.num_images else len(data)
    extractor = resolve_extractor(str(e.fid.extractor), data_cfg)
    if num_images < fidlib.min_stable_count(extractor):
        warnings.warn(f"eval.num_images={num_images} is below {fidlib.min_stable_count(extractor)}"
                      f", the feature width of {extractor}: the covariance is rank-deficient and "
                      f"FID noisy. Compare only numbers made with the same count.", stacklevel=2)
    if num_images > len(data):
        log.warning("eval.num_images=%d > %d training images: FID compares %d generated "
                    "with all %d real images", num_images, len(data), num_images, len(data))
    subset_seed = int(e.subset_seed)
    real = subset(data.images, num_images, subset_seed)
    seeds = e.seeds
    bootstrap = int(e.bootstrap)
    if bootstrap and len(seeds) > 1:
        log.info("eval.bootstrap=%d skipped: %d sampling seeds give the report a t-interval "
                 "over seeds", bootstrap, len(seeds))
        bootstrap = 0
    features = metriclib.FeatureExtractor(extractor, weights_path=e.fid.weights_path,
                                          device=str(device), batch_size=int(e.fid.batch_size))
    real_name = fidlib.real_stats_name(data.name, data.image_size, extractor, len(real),
                                       features.weights_id)
    info = read_run_info(run.path)
    if info is None:  # a lone checkpoint: its output folder becomes a run for the analysis
        info = checkpoint_info(run, last, data, max(ep for ep, _ in checkpoints))
        write_run_info(run.path, info)
    progress = settings.progress
    ctx = EvalContext(
        e=e, settings=settings, device=device, run=run, checkpoints=checkpoints, info=info,
        data=data,
        real=real, real_name=real_name, extractor=extractor, num_images=num_images,
        schedule=schedule_of(last.get("config"), log=log.warning),
        results=ResultsFile(run.fid_csv), trusted=trusted, progress=progress,
        seeds=seeds, subset_seed=subset_seed, metrics=metriclib.check_metrics(list(e.metrics)),
        bootstrap=bootstrap, features=features,
        real_set=metriclib.RealSet(features, real, real_name, e.fid.cache_root,
                                   progress=progress),
        train_set=(metriclib.RealSet(  # the same set when every training image is real
            features, data.images, fidlib.real_stats_name(data.name, data.image_size, extractor,
                                                          len(data), features.weights_id),
            e.fid.cache_root,
            progress=progress) if len(real) < len(data) else None),
        logger=run_loggers(run.path), environment=describe_environment(device),
        unreadable=unreadable)
    ctx.train_set = ctx.train_set or ctx.real_set
    return ctx, last


# -- the evaluation -----------------------------------------------------------------------------
def evaluate(settings: EvalSettings) -> Path:
    """Evaluate every selected checkpoint; returns the path of fid.csv. Checkpoints that cannot
    be read are skipped; after every other one is scored, an error names them."""
    ctx, last = prepare(settings)
    with log_to(ctx.run.eval_log), ctx.logger:
        cleaned, size = remove_stale_temporaries(ctx.run.eval_folders())
        if cleaned:
            log.info("removed %d temporary files (%s) left by an interrupted evaluation",
                     cleaned, fmt_bytes(size))
        log.info("evaluating %d checkpoint(s) of %s: %d images per sampling seed %s vs %d "
                 "real (subset seed %d), %d DDIM steps (final step %s), noise schedule %s, "
                 "extractor %s, metrics %s%s", len(ctx.checkpoints), ctx.info.run,
                 ctx.num_images, ctx.seeds, len(ctx.real), ctx.subset_seed, ctx.e.num_steps,
                 ctx.e.final_step, ctx.schedule.name, ctx.extractor, ctx.metrics,
                 f", {ctx.bootstrap} bootstrap replicates" if ctx.bootstrap else "")
        log.info("environment %s: %s", ctx.environment["id"], describe_env(ctx.environment))
        newest = next(p for _, p in reversed(ctx.checkpoints) if p not in ctx.unreadable)
        for epoch, path in ctx.checkpoints:
            if path in ctx.unreadable:
                log.error("skipping epoch %d: %s", epoch, ctx.unreadable[path])
                continue
            try:
                state = last if path == newest else ckpt.load_checkpoint(path,
                                                                         trusted=ctx.trusted)
            except ckpt.CheckpointError as err:  # score the others, then say which failed
                ctx.unreadable[path] = str(err)
                log.error("skipping epoch %d: %s", epoch, err)
                continue
            evaluate_checkpoint(ctx, epoch, path, state)
        if ctx.unreadable:
            raise ckpt.CheckpointError(
                f"{len(ctx.unreadable)} of {len(ctx.checkpoints)} checkpoint(s) could not be "
                f"read and were not scored: "
                + "; ".join(str(err) for err in ctx.unreadable.values())
                + f". Every other checkpoint was scored ({ctx.results.path}). Re-copy or "
                f"delete the broken files, or leave them out with eval.epochs=[...].")
    return ctx.results.path


def evaluate_checkpoint(ctx: EvalContext, epoch: int, path: Path, state: dict) -> None:
    """Every selected weight set of one checkpoint: raw, every average it holds, and the
    post-hoc EMAs reconstructed for its epoch."""
    model = build_model(state, ctx.settings.model, path).to(ctx.device).eval()
    load_state(model, state["model_state"], f"{path} model_state")
    sets = weight_sets(state, ctx.info.steps_per_epoch)
    sets.update(reconstructed_sets(ctx.run.path, epoch, have=sets))
    ctx.results.refresh()  # rows another evaluation of this folder may have added meanwhile
    for ws in select(sets, ctx.e.weights, str(path)):
        todo = [(p, seed) for p in paths_for(model.kind, ctx.e.paths) for seed in ctx.seeds
                if ctx.e.force or ctx.missing(ctx.results.get(fid_row_key(
                    ctx.key(epoch, ws.name, p, seed))))]
        if not todo:
            log.info("epoch %d %s: already evaluated (eval.force=true to redo)", epoch, ws.name)
            continue
        load_weights(model, ws, state["model_state"])
        evaluate_weight_set(ctx, model, epoch, ws, todo, state.get("step"))


def evaluate_weight_set(ctx: EvalContext, model: torch.nn.Module, epoch: int, ws: WeightSet,
                        todo: list[tuple[str, int]], step: int | None) -> None:
    """Metrics of the weights loaded in `model` for each (sampling path, sampling seed) of
    `todo`: one row each."""
    e, spe = ctx.e, ctx.info.steps_per_epoch
    share = ws.share
    low = share is not None and share < float(e.ema_share_threshold)
    lag = ws.lag_epochs(spe)
    if ws.is_ema:
        log.info("epoch %d %s: %s, post-init share %s%s, lag %s epochs", epoch, ws.name,
                 ws.describe(), f"{share:.2f}" if share is not None else "unknown",
                 " (estimated)" if ws.estimated else "",
                 f"{lag:.1f}" if lag is not None else "unknown")
        if low:
            log.warning("epoch %d %s: only %.0f%% of this EMA comes from trained weights "
                        "(below eval.ema_share_threshold=%s); its FID mostly reflects the "
                        "initialisation, not training progress", epoch, ws.name, 100 * share,
                        e.ema_share_threshold)
    heatmap, grids = None, {}
    step = step if step is not None else (epoch * spe if spe and epoch >= 0 else None)
    length = ws.length(step)  # sigma_rel and half-life on one axis for every weight set
    for pname, seed in todo:
        t0 = time.perf_counter()
        key = ctx.key(epoch, ws.name, pname, seed)
        prior = old = None if e.force else ctx.results.get(fid_row_key(key))
        # a row lacking only a metric is completed from its kept features, without sampling
        feats = metriclib.load_features(ctx.run.features(key, fid_row_key(key)), key) \
            if old else None
        images = None
        if feats is None:
            if pname in ("dp_64", "dp_total") and heatmap is None:
                # the subset seed, not the sampling seed: one path per weight set, every seed
                heatmap, grids = cached_heatmap(model, ctx.schedule, ctx.data, e.heatmap,
                                                ctx.subset_seed, ctx.run.heatmaps_dir,
                                                f"epoch_{epoch:04d}_{ws.name}",
                                                int(e.num_steps), ctx.progress, ctx.run.name)
            images = generate(ctx, model, pname, heatmap, grids, seed)
            feats = ctx.features(images, progress=ctx.progress, desc="features")
            if e.keep_features:
                metriclib.save_features(ctx.run.features(key, fid_row_key(key)), feats, key)
            old = None  # sampled afresh: every metric of eval.metrics is recomputed
        values = measure_row(ctx, feats, seed, old, images, key)
        row = {**(prior or {}), **ctx.identity(), **key,  # other metrics of the row are kept
               "step": step if step is not None else "",
               "num_real": len(ctx.real), **values,
               "ema_share": round(share, 4) if share is not None else "",
               "ema_share_low": low if ws.is_ema else "",
               "lag_epochs": round(lag, 3) if lag else "",
               "sigma_rel": round(length.sigma_rel, 5) if length else "",
               "half_life_kimg": (round(length.half_life_kimg(ctx.info.batch_size), 4)
                                  if length and ctx.info.batch_size else ""),
               "seconds": round(time.perf_counter() - t0, 2),
               "environment": ctx.environment["id"]}
        ctx.results.add(row, ctx.environment)
        ctx.logger.log_eval(row)
        if e.grid and images is not None:
            write_grid(images[:GRID_IMAGES], ctx.run.grid(epoch, ws.name, pname, seed))
        log.info("epoch %d %-8s %-8s seed %d %s (%s, %d images)%s  %.1f s", epoch, ws.name,
                 pname, seed, describe_values(row), ctx.extractor, ctx.num_images,
                 "" if images is not None else " from kept features", row["seconds"])


def generate(ctx: EvalContext, model, pname: str, heatmap, grids, seed: int) -> torch.Tensor:
    """`eval.num_images` images of the weights in `model` from sampling seed `seed`: the same
    initial noise (and DDIM, eta 0, is deterministic) for every weight set."""
    e = ctx.e
    common = dict(seed=int(seed), batch_size=int(e.batch_size), device=ctx.device,
                  progress=ctx.progress, final_step=str(e.final_step))
    if model.kind == "baseline":
        return sample_baseline(model, ctx.schedule, ctx.num_images, num_steps=int(e.num_steps),
                               **common)
    path = lift_path(pname, heatmap, grids, int(e.num_steps))
    return sample_lift(model, ctx.schedule, ctx.num_images, path, **common)


def write_grid(images: torch.Tensor, path: Path) -> None:
    write_uint8_image(grid_image(images, nrow=9), path)
