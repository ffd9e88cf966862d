"""FID of every checkpoint of a run, for the raw and the EMA weights.

    python -m explore.evaluate run_dir=outputs/smoke/lift-ema0.99-seed0       # every checkpoint
    python -m explore.evaluate run_dir=... eval.epochs=[200,400] eval.weights=[ema]
    python -m explore.evaluate run_dir=... eval.paths=[diagonal,dp_64,dp_total]
    python -m explore.evaluate checkpoint=old_runs/lift_ema_400ep.pth model=lift \
        data=folder data.root=/data/afhq

For each (checkpoint, weight set, sampling path): sample `eval.num_images` images with DDIM
(Baseline: `ddim`; LIFT: `diagonal`, `dp_64`, `dp_total`, the DP paths from that checkpoint's and
weight set's error heatmap), compute FID against as many training images, append a row to
`<run>/eval/fid.csv` and write a 9x9 sample grid. Rows already there are skipped unless
eval.force=true, so an interrupted evaluation resumes where it stopped. Sampling uses the noise
schedule the run was trained with (`explore.diffusion.schedule_of`).

`evaluate(cfg)` is the plain function tests and launchers call; `main` is the Hydra wrapper.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from . import checkpoint as ckpt
from . import fid as fidlib
from .config import build
from .data import ImageSet, grid_image, subset
from .devices import resolve_device
from .diffusion import CosineSchedule, schedule_of
from .errors import ConfigError
from .files import atomic_write
from .lift_paths import cached_heatmap, lift_path, paths_for
from .loggers import RunLoggers, run_loggers
from .runfiles import (
    ResultsFile,
    RunFolder,
    RunInfo,
    epoch_from_name,
    fid_row_key,
    read_run_info,
    write_run_info,
)
from .sampling import check_final_step, sample_baseline, sample_lift
from .weights import WeightSet, load_state, load_weights, reconstructed_sets, select, weight_sets

log = logging.getLogger("explore.evaluate")

GRID_IMAGES = 81  # a 9x9 sample grid per row


@dataclass
class EvalContext:
    """Everything one evaluation needs, set up once (`prepare`) and shared by every row."""

    e: DictConfig                # the eval.* options
    cfg: DictConfig              # the whole command config (model=/data= for lone checkpoints)
    device: torch.device
    run: RunFolder               # where eval/ goes
    checkpoints: list[tuple[int, Path]]
    info: RunInfo                # the run's identity (run.json, or read off a lone checkpoint)
    data: ImageSet               # training images: the real set and the heatmap's images
    real: torch.Tensor           # the real images FID compares with
    real_name: str               # their statistics' cache name
    extractor: str
    num_images: int
    schedule: CosineSchedule     # the run's noise schedule
    results: ResultsFile
    trusted: bool
    progress: bool
    logger: RunLoggers           # the run's own loggers (its config.yaml): rows at their epoch

    def identity(self) -> dict:
        i = self.info
        return {"run": i.run, "model": i.model, "seed": i.seed, "ema_decay": i.ema_decay or "",
                "dataset": i.dataset, "image_size": i.image_size}

    def key(self, epoch: int, weights: str, path: str) -> dict:
        """The columns that identify one measurement (runfiles.FID_KEY)."""
        return {"epoch": epoch, "weights": weights, "path": path,
                "num_steps": int(self.e.num_steps), "num_images": self.num_images,
                "extractor": self.extractor, "schedule": self.schedule.name,
                "final_step": str(self.e.final_step)}


# -- what to evaluate ---------------------------------------------------------------------------
def find_checkpoints(cfg: DictConfig) -> tuple[RunFolder, list[tuple[int, Path]]]:
    """The run folder and its checkpoints (run_dir=), or one file and the folder its results go
    to (checkpoint=); eval.epochs narrows them."""
    # `checkpoint=<file>` here; an experiment preset (experiment=smoke) brings training's
    # `checkpoint:` settings node under the same key, which is no file
    lone = None if OmegaConf.is_dict(cfg.checkpoint) else cfg.checkpoint
    if bool(cfg.run_dir) == bool(lone):
        raise ConfigError("give exactly one of run_dir=<run folder> or checkpoint=<file>")
    if cfg.run_dir:
        run = RunFolder(cfg.run_dir)
        if not run.path.is_dir():
            raise ConfigError(f"run_dir={run.path} does not exist")
        found = run.checkpoints()
        if not found:
            raise ConfigError(f"run_dir={run.path} has no checkpoints "
                              f"({run.checkpoint_dir}/epoch_NNNN.pt): train it first")
    else:
        path = Path(lone)
        run = RunFolder(cfg.out_dir if cfg.out_dir else Path("outputs") / "eval" / path.stem)
        found = [(epoch_from_name(path), path)]  # None: read from the file (`prepare`)
    if cfg.eval.epochs:
        wanted = {int(x) for x in cfg.eval.epochs}
        have = {ep for ep, _ in found}
        if wanted - have:
            raise ConfigError(f"eval.epochs asks for {sorted(wanted - have)}, but the "
                              f"checkpoints are for epochs {sorted(have)}")
        found = [(ep, p) for ep, p in found if ep in wanted]
    return run, found


def build_model(state: dict, cfg: DictConfig, source: Path) -> torch.nn.Module:
    """The checkpoint's own model config if it has one; else `model=` from the command line,
    with the original study's `hidden_dims` when the checkpoint records them. A `model=` that
    contradicts the checkpoint's own config is an error naming both."""
    stored = (state.get("config") or {}).get("model")
    asked = cfg.get("model")
    if stored and asked and asked.get("_target_"):
        asked = OmegaConf.to_container(asked, resolve=True)
        if asked.get("_target_") != stored.get("_target_"):
            raise ConfigError(f"model={asked['_target_'].rsplit('.', 1)[-1]} was asked for, but "
                              f"{source} holds a {stored['_target_'].rsplit('.', 1)[-1]} (its "
                              f"stored config): drop model= or pick the right checkpoint")
    if stored:
        return build(stored)
    if not asked or not asked.get("_target_"):
        raise ConfigError(f"{source} does not say which model it holds: add model=lift or "
                          f"model=baseline")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if "hidden_dims" in state:
        model_cfg["hidden_dims"] = list(state["hidden_dims"])
    return build(model_cfg)


def load_data(state: dict, cfg: DictConfig) -> tuple[ImageSet, dict]:
    """Training images of the run (its stored data config), else data= from the command line."""
    data_cfg = (state.get("config") or {}).get("data")
    if not data_cfg:
        if not cfg.get("data") or not cfg.data.get("_target_"):
            raise ConfigError("the checkpoint does not say what it was trained on: add "
                              "data=folder data.root=/path/to/training/images (or data=afhq)")
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
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


def check_eval_config(e: DictConfig) -> None:
    if e.num_images is not None and int(e.num_images) < 2:
        raise ConfigError(f"eval.num_images={e.num_images} must be at least 2")
    if int(e.num_steps) < 1:
        raise ConfigError(f"eval.num_steps={e.num_steps} must be >= 1")
    if int(e.batch_size) < 1:
        raise ConfigError(f"eval.batch_size={e.batch_size} must be >= 1")
    try:
        check_final_step(str(e.final_step))
    except ValueError as err:
        raise ConfigError(f"eval.{err}") from None


def prepare(cfg: DictConfig) -> tuple[EvalContext, dict]:
    """The evaluation context, and the newest checkpoint's state (loaded once, reused)."""
    e = cfg.eval
    check_eval_config(e)
    device = resolve_device(cfg.device)
    run, checkpoints = find_checkpoints(cfg)
    trusted = bool(cfg.trust_checkpoint)
    last = ckpt.load_checkpoint(checkpoints[-1][1], trusted=trusted)
    if checkpoints[-1][0] is None:  # a lone file named without its epoch: the file says
        checkpoints = [(int(last.get("epoch", last.get("epochs", -1))), checkpoints[-1][1])]
    data, data_cfg = load_data(last, cfg)
    num_images = int(e.num_images) if e.num_images else len(data)
    extractor = resolve_extractor(str(e.fid.extractor), data_cfg)
    if num_images < fidlib.min_stable_count(extractor):
        warnings.warn(f"eval.num_images={num_images} is below {fidlib.min_stable_count(extractor)}"
                      f", the feature width of {extractor}: the covariance is rank-deficient and "
                      f"FID noisy. Compare only numbers made with the same count.", stacklevel=2)
    if num_images > len(data):
        log.warning("eval.num_images=%d > %d training images: FID compares %d generated "
                    "with all %d real images", num_images, len(data), num_images, len(data))
    real = subset(data.images, num_images, int(e.seed))
    info = read_run_info(run.path)
    if info is None:  # a lone checkpoint: its output folder becomes a run for the analysis
        info = checkpoint_info(run, last, data, max(ep for ep, _ in checkpoints))
        write_run_info(run.path, info)
    ctx = EvalContext(
        e=e, cfg=cfg, device=device, run=run, checkpoints=checkpoints, info=info, data=data,
        real=real, real_name=fidlib.real_stats_name(data.name, data.image_size, extractor,
                                                    len(real)),
        extractor=extractor, num_images=num_images,
        schedule=schedule_of(last.get("config"), log=log.warning),
        results=ResultsFile(run.fid_csv), trusted=trusted, progress=bool(cfg.progress),
        logger=run_loggers(run.path))
    return ctx, last


# -- the evaluation -----------------------------------------------------------------------------
def evaluate(cfg: DictConfig) -> Path:
    """Evaluate every selected checkpoint; returns the path of fid.csv."""
    ctx, last = prepare(cfg)
    with _log_to(ctx.run.eval_log), ctx.logger:
        log.info("evaluating %d checkpoint(s) of %s: %d images, %d DDIM steps (final step %s), "
                 "noise schedule %s, extractor %s", len(ctx.checkpoints), ctx.info.run,
                 ctx.num_images, ctx.e.num_steps, ctx.e.final_step, ctx.schedule.name,
                 ctx.extractor)
        for epoch, path in ctx.checkpoints:
            state = last if path == ctx.checkpoints[-1][1] else ckpt.load_checkpoint(
                path, trusted=ctx.trusted)
            evaluate_checkpoint(ctx, epoch, path, state)
    return ctx.results.path


def evaluate_checkpoint(ctx: EvalContext, epoch: int, path: Path, state: dict) -> None:
    """Every selected weight set of one checkpoint: raw, every average it holds, and the
    post-hoc EMAs reconstructed for its epoch."""
    model = build_model(state, ctx.cfg, path).to(ctx.device).eval()
    load_state(model, state["model_state"], f"{path} model_state")
    sets = weight_sets(state, ctx.info.steps_per_epoch)
    sets.update(reconstructed_sets(ctx.run.path, epoch, have=sets))
    for ws in select(sets, ctx.e.weights, str(path)):
        todo = [p for p in paths_for(model.kind, ctx.e.paths)
                if ctx.e.force or not ctx.results.has(fid_row_key(ctx.key(epoch, ws.name, p)))]
        if not todo:
            log.info("epoch %d %s: already evaluated (eval.force=true to redo)", epoch, ws.name)
            continue
        load_weights(model, ws, state["model_state"])
        evaluate_weight_set(ctx, model, epoch, ws, todo, state.get("step"))


def evaluate_weight_set(ctx: EvalContext, model: torch.nn.Module, epoch: int, ws: WeightSet,
                        todo: list[str], step: int | None) -> None:
    """FID of the weights loaded in `model` along each sampling path of `todo`: one row each."""
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
    for pname in todo:
        t0 = time.perf_counter()
        if pname in ("dp_64", "dp_total") and heatmap is None:
            heatmap, grids = cached_heatmap(model, ctx.schedule, ctx.data, e.heatmap, int(e.seed),
                                            ctx.run, f"epoch_{epoch:04d}_{ws.name}",
                                            int(e.num_steps), ctx.progress)
        images = generate(ctx, model, pname, heatmap, grids)
        fid = fidlib.compute_fid(images, ctx.real, extractor=ctx.extractor,
                                 weights_path=e.fid.weights_path, real_cache_name=ctx.real_name,
                                 cache_root=e.fid.cache_root, device=str(ctx.device),
                                 batch_size=int(e.fid.batch_size), progress=ctx.progress)
        row = {**ctx.identity(), **ctx.key(epoch, ws.name, pname),
               "step": step if step is not None else "",
               "fid": round(fid, 4),
               "ema_share": round(share, 4) if share is not None else "",
               "ema_share_low": low if ws.is_ema else "",
               "lag_epochs": round(lag, 3) if lag else "",
               "sigma_rel": round(length.sigma_rel, 5) if length else "",
               "half_life_kimg": (round(length.half_life_kimg(ctx.info.batch_size), 4)
                                  if length and ctx.info.batch_size else ""),
               "seconds": round(time.perf_counter() - t0, 2)}
        ctx.results.add(row)
        ctx.logger.log_eval(row)
        if e.grid:
            write_grid(images[:GRID_IMAGES], ctx.run.grid(epoch, ws.name, pname))
        log.info("epoch %d %-8s %-8s FID %.3f (%s, %d images)  %.1f s", epoch, ws.name, pname,
                 fid, ctx.extractor, ctx.num_images, row["seconds"])


def generate(ctx: EvalContext, model, pname: str, heatmap, grids) -> torch.Tensor:
    e = ctx.e
    common = dict(seed=int(e.seed), batch_size=int(e.batch_size), device=ctx.device,
                  progress=ctx.progress, final_step=str(e.final_step))
    if model.kind == "baseline":
        return sample_baseline(model, ctx.schedule, ctx.num_images, num_steps=int(e.num_steps),
                               **common)
    path = lift_path(pname, heatmap, grids, int(e.num_steps))
    return sample_lift(model, ctx.schedule, ctx.num_images, path, **common)


def write_grid(images: torch.Tensor, path: Path) -> None:
    from PIL import Image

    grid = Image.fromarray(grid_image(images, nrow=9).permute(1, 2, 0).numpy())
    atomic_write(path, lambda f: grid.save(f, format="png"))


@contextlib.contextmanager
def _log_to(path: Path):
    """Also log to `path` (the run's own record of what was evaluated and how long it took)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger("explore")
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(min(old_level or logging.INFO, logging.INFO))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def with_run_eval_defaults(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A run trained with an experiment preset (experiment=smoke) keeps the preset's `eval`
    settings in its config.yaml. When the command line names no experiment, those become the
    defaults, so `explore.evaluate run_dir=<smoke run>` scores it like the smoke study does
    (not with the reference 30x30 heatmap, minutes per checkpoint on a CPU). eval.* options on
    the command line still win."""
    if not cfg.run_dir or any(o.lstrip("+~").startswith("experiment=") for o in overrides):
        return cfg
    saved = RunFolder(str(cfg.run_dir)).config
    try:
        run_eval = OmegaConf.load(saved).get("eval")
    except (OSError, ValueError):  # no or unreadable config: find_checkpoints reports it
        return cfg
    if not run_eval:
        return cfg
    user = OmegaConf.from_dotlist([o for o in overrides if o.startswith("eval.")])
    merged = OmegaConf.merge(cfg.eval, run_eval, user.get("eval") or {})
    log.info("eval settings of the run's preset (%s): %s", saved,
             OmegaConf.to_container(run_eval))
    cfg = cfg.copy()
    cfg.eval = merged
    return cfg


def _run(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    cfg = with_run_eval_defaults(cfg, list(HydraConfig.get().overrides.task))
    print(f"results: {evaluate(cfg)}")


if __name__ == "__main__":
    from .cli import hydra_entry

    hydra_entry("evaluate", _run)()
