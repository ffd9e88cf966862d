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
eval.force=true, so an interrupted evaluation resumes where it stopped.

`evaluate(cfg)` is the plain function tests and launchers call; `main` is the Hydra wrapper.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from . import checkpoint as ckpt
from . import fid as fidlib
from .config import build, register_resolvers
from .data import ImageSet, grid_image, subset
from .devices import resolve_device
from .diffusion import schedule_of
from .dp_path import fractional_grid_index, optimal_path, path_to_timesteps
from .errors import ConfigError, UserError
from .files import atomic_write
from .heatmap import Heatmap, HeatmapFileError, error_heatmap, pick_images
from .heatmap_plot import plot_heatmap
from .results import ResultsFile, row_key
from .sampling import check_final_step, diagonal_path, sample_baseline, sample_lift
from .weights import (
    WeightSet,
    load_state,
    load_weights,
    reconstructed_sets,
    select,
    weight_sets,
)

log = logging.getLogger("explore.evaluate")

LIFT_PATHS = ("diagonal", "dp_64", "dp_total")
GRID_IMAGES = 81  # a 9x9 sample grid per row


@dataclass
class Target:
    """What to evaluate: checkpoints, where results go, and the run's identity."""

    checkpoints: list[tuple[int, Path]]
    out_dir: Path
    run: str
    run_config: dict | None  # the training config stored in the checkpoints (None: original)


def find_targets(cfg: DictConfig) -> Target:
    if bool(cfg.run_dir) == bool(cfg.checkpoint):
        raise ConfigError("give exactly one of run_dir=<run folder> or checkpoint=<file>")
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
        if not run_dir.is_dir():
            raise ConfigError(f"run_dir={run_dir} does not exist")
        found = ckpt.list_checkpoints(run_dir)
        if not found:
            raise ConfigError(f"run_dir={run_dir} has no checkpoints "
                              f"({ckpt.checkpoint_dir(run_dir)}/epoch_NNNN.pt): train it first")
        return Target(found, run_dir, run_dir.name, None)
    path = Path(cfg.checkpoint)
    epoch = ckpt.epoch_from_name(path)
    out = Path(cfg.out_dir) if cfg.out_dir else Path("outputs") / "eval" / path.stem
    return Target([(epoch if epoch is not None else -1, path)], out, path.stem, None)


def build_model(state: dict, cfg: DictConfig, source: Path) -> torch.nn.Module:
    """The checkpoint's own model config if it has one; else `model=` from the command line,
    with the original study's `hidden_dims` when the checkpoint records them."""
    run_cfg = state.get("config")
    if run_cfg and run_cfg.get("model"):
        return build(run_cfg["model"])
    if not cfg.get("model") or not cfg.model.get("_target_"):
        raise ConfigError(f"{source} does not say which model it holds: add model=lift or "
                          f"model=baseline")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if "hidden_dims" in state:
        model_cfg["hidden_dims"] = list(state["hidden_dims"])
    return build(model_cfg)


def load_data(state: dict, cfg: DictConfig) -> tuple[ImageSet, dict]:
    """Training images of the run (its stored data config), else data= from the command line."""
    run_cfg = state.get("config")
    data_cfg = run_cfg["data"] if run_cfg and run_cfg.get("data") else None
    if data_cfg is None:
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


def paths_for(kind: str, wanted) -> list[str]:
    if kind == "baseline":
        return ["ddim"]
    wanted = list(wanted or ["dp_total"])
    bad = [p for p in wanted if p not in LIFT_PATHS]
    if bad:
        raise ConfigError(f"eval.paths has {bad}: LIFT paths are {list(LIFT_PATHS)}")
    return wanted


# -- heatmap and DP paths (cached per checkpoint and weight set) ---------------------------
def dp_paths(heatmap: Heatmap, num_steps: int, max_jump: int) -> dict[str, list]:
    """Grid paths of DP-64 (zeros for the low-scale error) and DP-Total."""
    out = {}
    for name, e32 in (("dp_64", heatmap.error_32 * 0), ("dp_total", heatmap.error_32)):
        grid, cost = optimal_path(heatmap.error_64, e32, heatmap.log_snr, num_steps, max_jump)
        t64, t32 = path_to_timesteps(grid, heatmap.timesteps)
        log.info("%s path (cost %.4g): t_64 %s, t_32 %s", name, cost, t64, t32)
        out[name] = grid
    return out


def lift_path(name: str, heatmap: Heatmap | None, grids: dict, num_steps: int):
    """(t_64, t_32) pairs of a LIFT sampling path."""
    if name == "diagonal":
        return diagonal_path(num_steps)
    t64, t32 = path_to_timesteps(grids[name], heatmap.timesteps)
    return list(zip(t64, t32))


def cached_heatmap(model, schedule, data: ImageSet, hcfg, seed: int, out_dir: Path, tag: str,
                   num_steps: int, progress: bool) -> tuple[Heatmap, dict]:
    """The heatmap of the model's current weights (loaded from, or saved to, eval/heatmaps/)
    and its DP paths; a PNG with the paths drawn is written next to it."""
    folder = out_dir / "eval" / "heatmaps"
    # the schedule is in the name: gamma(SNR) and the DP's log-SNR grid depend on it
    name = (f"{tag}_{schedule.name}_g{hcfg.grid_size}_k{hcfg.num_probes}_n{hcfg.num_images}"
            f"_s{seed}")
    npz = folder / f"{name}.npz"
    if npz.is_file():
        try:
            hm = Heatmap.load(npz)
            return hm, dp_paths(hm, num_steps, hcfg.max_jump)
        except HeatmapFileError as e:
            log.warning("recomputing heatmap: %s", e)
    t0 = time.perf_counter()
    images = pick_images(data.images, min(hcfg.num_images, len(data)), seed)
    hm = error_heatmap(model, schedule, images, grid_size=hcfg.grid_size,
                       num_probes=hcfg.num_probes, seed=seed,
                       cells_per_forward=hcfg.cells_per_forward, progress=progress)
    hm.save(npz)
    log.info("heatmap %s: %.1f s", name, time.perf_counter() - t0)
    # the figure: the three sampling paths on the 64 and total error maps
    grids = dp_paths(hm, num_steps, hcfg.max_jump)
    diag = [t for t, _ in diagonal_path(num_steps)]
    on_grid = fractional_grid_index(diag, hm.timesteps)
    drawn = {"diagonal": list(zip(on_grid, on_grid)), **grids}
    plot_heatmap(hm, drawn, folder / f"{name}.png", title=f"{out_dir.name} {tag}")
    return hm, grids


# -- the evaluation -----------------------------------------------------------------------------
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


def evaluate(cfg: DictConfig) -> Path:
    """Evaluate every selected checkpoint; returns the path of fid.csv."""
    e = cfg.eval
    check_eval_config(e)
    device = resolve_device(cfg.device)
    target = find_targets(cfg)
    if e.epochs:
        wanted = {int(x) for x in e.epochs}
        have = {ep for ep, _ in target.checkpoints}
        if wanted - have:
            raise ConfigError(f"eval.epochs asks for {sorted(wanted - have)}, but the "
                              f"checkpoints are for epochs {sorted(have)}")
        target.checkpoints = [(ep, p) for ep, p in target.checkpoints if ep in wanted]
    trusted = bool(cfg.trust_checkpoint)
    first = ckpt.load_checkpoint(target.checkpoints[-1][1], trusted=trusted)
    data, data_cfg = load_data(first, cfg)
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
    real_name = fidlib.real_stats_name(data.name, data.image_size, extractor, len(real))
    run_meta = _run_meta(target, first, data)
    results = ResultsFile(target.out_dir / "eval" / "fid.csv")
    with _log_to(target.out_dir / "eval" / "evaluate.log"):
        _evaluate_checkpoints(cfg, target, first, data, real, real_name, extractor, num_images,
                              run_meta, results, device)
    return results.path


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


def _evaluate_checkpoints(cfg, target, first, data, real, real_name, extractor, num_images,
                          run_meta, results, device) -> None:
    e = cfg.eval
    # the run's own schedule (its stored config; the original's for an original checkpoint)
    schedule = schedule_of(first.get("config"), log=log.warning)
    progress = bool(cfg.progress)
    trusted = bool(cfg.trust_checkpoint)
    log.info("evaluating %d checkpoint(s) of %s: %d images, %d DDIM steps (final step %s), "
             "noise schedule %s, extractor %s", len(target.checkpoints), target.run, num_images,
             e.num_steps, e.final_step, schedule.name, extractor)

    for epoch, path in target.checkpoints:
        state = first if path == target.checkpoints[-1][1] else ckpt.load_checkpoint(
            path, trusted=trusted)
        model = build_model(state, cfg, path).to(device).eval()
        load_state(model, state["model_state"], f"{path} model_state")
        # raw + every average in the checkpoint + the post-hoc EMAs reconstructed for this epoch
        sets = weight_sets(state, run_meta["steps_per_epoch"])
        sets.update(reconstructed_sets(target.out_dir, epoch, have=sets))
        sets = select(sets, e.weights, str(path))
        for ws in sets:
            todo = [p for p in paths_for(model.kind, e.paths)
                    if e.force or not results.has(row_key(_key_row(epoch, ws, p, e, num_images,
                                                                    extractor, schedule)))]
            if not todo:
                log.info("epoch %d %s: already evaluated (eval.force=true to redo)", epoch,
                         ws.name)
                continue
            load_weights(model, ws, state["model_state"])
            share = ws.share
            low = share is not None and share < float(e.ema_share_threshold)
            if ws.is_ema:
                lag = ws.lag_epochs(run_meta["steps_per_epoch"])
                log.info("epoch %d %s: %s, post-init share %s%s, lag %s epochs", epoch,
                         ws.name, ws.describe(),
                         f"{share:.2f}" if share is not None else "unknown",
                         " (estimated)" if ws.estimated else "",
                         f"{lag:.1f}" if lag is not None else "unknown")
                if low:
                    log.warning("epoch %d %s: only %.0f%% of this EMA comes from trained "
                                "weights (below eval.ema_share_threshold=%s); its FID mostly "
                                "reflects the initialisation, not training progress", epoch,
                                ws.name, 100 * share, e.ema_share_threshold)
            heatmap, grids = None, {}
            for pname in todo:
                t0 = time.perf_counter()
                if pname in ("dp_64", "dp_total") and heatmap is None:
                    heatmap, grids = cached_heatmap(model, schedule, data, e.heatmap, int(e.seed),
                                             target.out_dir, f"epoch_{epoch:04d}_{ws.name}",
                                             int(e.num_steps), progress)
                images = _generate(model, schedule, pname, heatmap, grids, e, num_images,
                                   device, progress)
                fid = fidlib.compute_fid(images, real, extractor=extractor,
                                         weights_path=e.fid.weights_path,
                                         real_cache_name=real_name, cache_root=e.fid.cache_root,
                                         device=str(device), batch_size=int(e.fid.batch_size),
                                         progress=progress)
                row = {**run_meta["row"],
                       **_key_row(epoch, ws, pname, e, num_images, extractor, schedule),
                       "step": state.get("step", _estimated_step(epoch, run_meta)),
                       "fid": round(fid, 4),
                       "ema_share": round(share, 4) if share is not None else "",
                       "ema_share_low": low if ws.is_ema else "",
                       "lag_epochs": (round(ws.lag_epochs(run_meta["steps_per_epoch"]), 3)
                                      if ws.lag_epochs(run_meta["steps_per_epoch"]) else ""),
                       "seconds": round(time.perf_counter() - t0, 2)}
                results.add(row)
                if e.grid:
                    _write_grid(images[:GRID_IMAGES], target.out_dir / "eval" / "grids" /
                                f"epoch_{epoch:04d}_{ws.name}_{pname}.png")
                log.info("epoch %d %-8s %-8s FID %.3f (%s, %d images)  %.1f s", epoch, ws.name,
                         pname, fid, extractor, num_images, row["seconds"])


def _key_row(epoch, ws: WeightSet, pname, e, num_images, extractor, schedule) -> dict:
    return {"epoch": epoch, "weights": ws.name, "path": pname, "num_steps": int(e.num_steps),
            "num_images": num_images, "extractor": extractor, "schedule": schedule.name,
            "final_step": str(e.final_step)}


def _generate(model, schedule, pname, heatmap, grids, e, num_images, device, progress):
    common = dict(seed=int(e.seed), batch_size=int(e.batch_size), device=device,
                  progress=progress, final_step=str(e.final_step))
    if model.kind == "baseline":
        return sample_baseline(model, schedule, num_images, num_steps=int(e.num_steps), **common)
    path = lift_path(pname, heatmap, grids, int(e.num_steps))
    return sample_lift(model, schedule, num_images, path, **common)


def _write_grid(images: torch.Tensor, path: Path) -> None:
    from PIL import Image

    grid = Image.fromarray(grid_image(images, nrow=9).permute(1, 2, 0).numpy())
    atomic_write(path, lambda f: grid.save(f, format="png"))


def _run_meta(target: Target, state: dict, data: ImageSet) -> dict:
    """The run's identity columns, from run.json when there is one (a run folder)."""
    meta_file = target.out_dir / "run.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if not meta:
        ema_state = state.get("ema_state") or {}
        run_cfg = state.get("config") or {}
        meta = {"run": target.run, "model": state.get("model_kind"),
                "seed": run_cfg.get("seed"), "ema_decay": ema_state.get("decay",
                                                                        state.get("ema_decay")),
                "dataset": data.name, "image_size": data.image_size,
                "steps_per_epoch": len(data) // 64, "batch_size": 64}
    model_kind = meta.get("model") or ("lift" if any(k.startswith("time_combine")
                                                     for k in state["model_state"]) else
                                       "baseline")
    if not meta_file.is_file():  # a lone checkpoint: make its output folder a run for analysis
        meta.update(model=model_kind, epochs=max(ep for ep, _ in target.checkpoints),
                    ema_decays=[meta["ema_decay"]] if meta.get("ema_decay") else [])
        atomic_write(meta_file, lambda f: f.write(json.dumps(meta, indent=2).encode()))
    row = {"run": meta.get("run", target.run), "model": model_kind, "seed": meta.get("seed"),
           "ema_decay": meta.get("ema_decay") or "", "dataset": meta.get("dataset", data.name),
           "image_size": meta.get("image_size", data.image_size)}
    return {"row": row, "steps_per_epoch": meta.get("steps_per_epoch")}


def _estimated_step(epoch: int, run_meta: dict):
    spe = run_meta.get("steps_per_epoch")
    return epoch * spe if spe and epoch >= 0 else ""


register_resolvers()


def with_run_eval_defaults(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A run trained with an experiment preset (experiment=smoke) keeps the preset's `eval`
    settings in its config.yaml. When the command line names no experiment, those become the
    defaults, so `explore.evaluate run_dir=<smoke run>` scores it like the smoke study does
    (not with the reference 30x30 heatmap, minutes per checkpoint on a CPU). eval.* options on
    the command line still win."""
    if not cfg.run_dir or any(o.lstrip("+~").startswith("experiment=") for o in overrides):
        return cfg
    saved = Path(str(cfg.run_dir)) / "config.yaml"
    try:
        run_eval = OmegaConf.load(saved).get("eval")
    except (OSError, ValueError):  # no or unreadable config: find_targets reports it
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


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        cfg = with_run_eval_defaults(cfg, list(HydraConfig.get().overrides.task))
        out = evaluate(cfg)
    except UserError as err:
        log.error("%s", err)
        sys.exit(1)
    print(f"results: {out}")


if __name__ == "__main__":
    main()

