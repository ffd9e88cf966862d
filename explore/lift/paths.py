"""LIFT's sampling paths for evaluation: the diagonal, or the DP-64 / DP-Total paths found on the
error heatmap of the weights being evaluated (cached per checkpoint, weight set and schedule).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from explore.core.errors import ConfigError
from explore.lift.dp_path import fractional_grid_index, optimal_path, path_to_timesteps
from explore.lift.heatmap import Heatmap, HeatmapFileError, error_heatmap, pick_images
from explore.lift.heatmap_plot import plot_heatmap
from explore.nets.data import ImageSet
from explore.nets.sampling import diagonal_path

log = logging.getLogger("explore.evaluate")

LIFT_PATHS = ("diagonal", "dp_64", "dp_total")


def paths_for(kind: str, wanted) -> list[str]:
    """The sampling paths of a model: Baseline `ddim`; LIFT the wanted ones (default dp_total)."""
    if kind == "baseline":
        return ["ddim"]
    wanted = list(wanted or ["dp_total"])
    bad = [p for p in wanted if p not in LIFT_PATHS]
    if bad:
        raise ConfigError(f"eval.paths has {bad}: LIFT paths are {list(LIFT_PATHS)}")
    return wanted


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


def cached_heatmap(model, schedule, data: ImageSet, hcfg, seed: int, folder: Path, tag: str,
                   num_steps: int, progress: bool, title: str = "") -> tuple[Heatmap, dict]:
    """The heatmap of the model's current weights (loaded from, or saved to, `folder`: a run's
    eval/heatmaps/) and its DP paths; a PNG with the paths drawn is written next to it."""
    # the schedule is in the name: gamma(SNR) and the DP's log-SNR grid depend on it
    name = (f"{tag}_{schedule.name}_g{hcfg.grid_size}_k{hcfg.num_probes}_n{hcfg.num_images}"
            f"_s{seed}")
    npz = Path(folder) / f"{name}.npz"
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
    plot_heatmap(hm, drawn, npz.with_suffix(".png"), title=f"{title} {tag}".strip())
    return hm, grids


# the names `cached_heatmap` gives its files, with the tag explore.evaluate passes
# (epoch_NNNN_<weights>): epoch_0004_ema_study_g10_k2_n4_s42.npz
_CACHED_RE = re.compile(r"^epoch_(?P<epoch>\d+)_(?P<weights>[^_]+)_(?P<schedule>[^_]+)"
                        r"_g\d+_k\d+_n\d+_s\d+\.npz$")


def cached_dp_total(folder: Path, schedule_name: str, weights: str, epoch: int,
                    num_steps: int, max_jump: int = 5) -> tuple[list, str] | None:
    """The DP-Total path on the newest heatmap evaluation cached for this run at or before
    `epoch` (these weights' own if there is one, else another weight set's), as
    ((t_64, t_32) pairs, a description); None when there is none (sample along the diagonal).
    Never computes a heatmap."""
    found = []
    folder = Path(folder)
    for npz in folder.glob("epoch_*.npz") if folder.is_dir() else []:
        m = _CACHED_RE.match(npz.name)
        if m and m["schedule"] == schedule_name and int(m["epoch"]) <= epoch:
            found.append((m["weights"] == weights, int(m["epoch"]), npz.name, m["weights"]))
    for _, e, name, w in sorted(found, reverse=True):
        try:
            hm = Heatmap.load(folder / name)
            grid, _ = optimal_path(hm.error_64, hm.error_32, hm.log_snr, num_steps, max_jump)
        except (HeatmapFileError, ValueError) as err:
            log.debug("cached heatmap %s unusable: %s", name, err)
            continue
        t64, t32 = path_to_timesteps(grid, hm.timesteps)
        return list(zip(t64, t32)), f"DP-Total path (heatmap of epoch {e} {w})"
    return None
