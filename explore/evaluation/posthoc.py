"""Post-hoc EMA as a stage of the study: the EMA weights of any power-profile length,
reconstructed after training from the snapshots of the power-function EMAs tracked during
training (Karras et al. 2024, EDM2, section 3 and algorithm 3), written where evaluation finds
them. The maths is explore.ema.reconstruction; this module reads the run folder's snapshots and
checkpoints and writes the reconstructions.

    written = posthoc(settings)        # explore.posthoc builds `settings` from the config

Target at epoch E: the power profile of the wanted sigma_rel at step T, the step of the tracked
EMAs in checkpoint E, fitted by every source at or before T; the fit's relative profile error is
logged. `decay=[d]` asks for the length of an exponential EMA of decay d at step T
(sigma_rel = sqrt(d) / ((1 - d) T), 3 significant digits); a decay too long for an epoch's step
is skipped there with a warning.

Output: `<run>/phema/reconstructed/epoch_NNNN_phema@<sigma_rel>.pt` ({name, sigma_rel, gamma,
step, epoch, shadow, coefficients, sources, profile_error, ...}), which evaluation scores as the
weight set `phema@<sigma_rel>` of epoch NNNN. A target equal to a tracked sigma_rel is
reconstructed too (with `sources=` leaving that profile out, it checks the method on your run:
the log and the file give the difference to the tracked weights), but evaluation uses the
tracked weights for that name. Existing files are kept unless force=true.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from explore.core.errors import ConfigError
from explore.ema.names import phema_name
from explore.ema.power import sigma_rel_to_gamma
from explore.ema.reconstruction import (
    PosthocError,
    Source,
    Target,
    compare,
    reconstruct,
    sigma_rel_for_decay,
)
from explore.ema.state import power_states
from explore.evaluation.settings import PosthocSettings
from explore.run import checkpoint as ckpt
from explore.run.folder import RunFolder

log = logging.getLogger("explore.posthoc")

FORMAT = "explore-phema-reconstruction/1"
POOR_FIT = 0.05  # relative profile error above which the log warns


# -- the sources: the run's snapshots and checkpoints ---------------------------------------------
def load_source(path: Path) -> dict | None:
    """A snapshot or checkpoint, memory-mapped (tensors are read when used); None, with a
    warning, when it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is skipped and named
        log.warning("skipping unreadable %s: %s", path, str(e).splitlines()[0] if str(e) else e)
        return None


def find_sources(run_dir: Path, wanted: list[float] | None = None) -> list[Source]:
    """Every (step, sigma_rel) snapshot of the run's power EMAs, oldest first."""
    run = RunFolder(run_dir)
    files = run.snapshots() + [p for _, p in run.checkpoints()]
    names = {phema_name(s) for s in wanted} if wanted else None
    found: dict[tuple[int, str], Source] = {}
    for path in files:
        for name, s in power_states(load_source(path)).items():
            if names is not None and name not in names:
                continue
            key = (s.step, name)
            if key[0] > 0 and key not in found:
                found[key] = Source(key[0], name, s.sigma_rel, s.gamma, path)
    if names is not None:
        lacking = names - {s.name for s in found.values()}
        if lacking:
            raise ConfigError(f"sources={sorted(lacking)} were not tracked in {run_dir}; it "
                              f"tracks {sorted({s.name for s in found.values()})}")
    return sorted(found.values(), key=lambda s: (s.step, s.sigma_rel))


def stored_power_states(path: Path) -> dict:
    """The power EMAs kept in a snapshot or checkpoint, by name ({} when unreadable)."""
    return power_states(load_source(path))


# -- the stage -------------------------------------------------------------------------------------
def _targets(cfg: PosthocSettings, step: int | None) -> list[Target]:
    """The wanted profiles at `step`; an exponential decay too long for that step is skipped
    with a warning (with epochs=all it may fit later epochs). step=None: check the config."""
    if not (cfg.sigma_rel or cfg.decay):
        raise ConfigError("nothing to reconstruct: give sigma_rel=[...] and/or decay=[...]")
    targets = []
    for s in cfg.sigma_rel:
        try:
            targets.append(Target(phema_name(s), float(s), sigma_rel_to_gamma(s)))
        except ValueError as e:
            raise ConfigError(f"sigma_rel={s}: {e}") from e
    for d in cfg.decay:
        if not 0.0 < float(d) < 1.0:
            raise ConfigError(f"decay={d}: must be in (0, 1)")
        if step is None:
            continue
        try:
            s = sigma_rel_for_decay(d, step)
        except ConfigError as e:
            log.warning("skipping: %s", e)
            continue
        targets.append(Target(phema_name(s), s, sigma_rel_to_gamma(s), from_decay=float(d)))
    return targets


def _epochs(cfg: PosthocSettings, run_dir: Path) -> list[tuple[int, Path]]:
    found = RunFolder(run_dir).checkpoints()
    if not found:
        raise ConfigError(f"run_dir={run_dir} has no checkpoints: train it first")
    if cfg.epochs is None:
        return found[-1:]
    if str(cfg.epochs) == "all":
        return found
    wanted = {int(e) for e in cfg.epochs}
    missing = wanted - {e for e, _ in found}
    if missing:
        raise ConfigError(f"epochs={sorted(missing)} have no checkpoint; there are "
                          f"{[e for e, _ in found]}")
    return [(e, p) for e, p in found if e in wanted]


def posthoc(cfg: PosthocSettings) -> list[Path]:
    """Reconstruct the requested post-hoc EMAs at the chosen epochs; returns the files written."""
    if not cfg.run_dir:
        raise ConfigError("give run_dir=<run folder trained with ema=posthoc>")
    run_dir = Path(cfg.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir={run_dir} does not exist")
    _targets(cfg, None)  # a bad target is an error before any file is read
    epochs = _epochs(cfg, run_dir)
    sources = find_sources(run_dir, list(cfg.sources) if cfg.sources else None)
    if not sources:
        raise ConfigError(f"{run_dir} has no power-function EMA snapshots: train it with "
                          f"ema=posthoc")
    log.info("%s: %d snapshots of %s at steps %d..%d", run_dir, len(sources),
             sorted({s.name for s in sources}), sources[0].step, sources[-1].step)
    written = []
    for epoch, path in epochs:
        written += _reconstruct_epoch(cfg, run_dir, epoch, path, sources)
    return written


def _reconstruct_epoch(cfg, run_dir: Path, epoch: int, path: Path, sources: list[Source]
                       ) -> list[Path]:
    state = load_source(path)
    tracked = power_states(state)
    if state is None or not tracked:
        raise PosthocError(f"{path} holds no power-function EMA (was the run trained with "
                           f"ema=posthoc?)")
    step = next(iter(tracked.values())).step
    targets = [t for t in _targets(cfg, step)
               if cfg.force or not RunFolder(run_dir).reconstructed(epoch, t.name).is_file()]
    if not targets:
        log.info("epoch %d: already reconstructed (force=true to redo)", epoch)
        return []
    weights = reconstruct(targets, sources, step, stored_power_states)
    out = []
    for t in targets:
        info = {"format": FORMAT, "kind": "phema", "name": t.name, "sigma_rel": t.sigma_rel,
                "gamma": t.gamma, "from_decay": t.from_decay, "epoch": epoch, "step": step,
                "init_weight": 0.0, "window_steps": t.sigma_rel * step,
                "coefficients": t.fit.coefficients.tolist(),
                "sources": [[s.step, s.sigma_rel] for s in t.sources],
                "profile_error": t.fit.profile_error, "coefficient_sum": t.fit.raw_sum}
        if t.name in tracked:
            info["check"] = compare(weights[t.name], tracked[t.name].shadow,
                                    state["model_state"])
        _log_target(epoch, step, t, info)
        p = RunFolder(run_dir).reconstructed(epoch, t.name)
        if p.is_file():  # force=true: evaluation made from the old weights is now stale
            log.warning("replacing %s: rescore it with python -m explore.evaluate run_dir=%s "
                        "eval.force=true eval.weights=[%s] eval.epochs=[%d] after deleting its "
                        "cached heatmaps %s", p.name, run_dir, t.name, epoch,
                        run_dir / "eval" / "heatmaps" / f"epoch_{epoch:04d}_{t.name}_*")
        ckpt.save_file({**info, "shadow": weights[t.name]}, p)
        out.append(p)
    return out


def _log_target(epoch: int, step: int, t: Target, info: dict) -> None:
    origin = f" (decay {t.from_decay} at step {step})" if t.from_decay is not None else ""
    log.info("epoch %d %s%s: gamma %.3f, %d snapshots, profile error %.2e, window %.0f steps",
             epoch, t.name, origin, t.gamma, len(t.sources), t.fit.profile_error,
             t.sigma_rel * step)
    if t.fit.profile_error > POOR_FIT:
        log.warning("epoch %d %s: the snapshots fit its profile poorly (relative error %.2f): "
                    "snapshot more often (ema.snapshot_every) or track sigma_rels on both "
                    "sides of it", epoch, t.name, t.fit.profile_error)
    if "check" in info:
        c = info["check"]
        log.info("epoch %d %s is also tracked: reconstruction - tracked: max |diff| %.2e, "
                 "rms %.2e = %.2f%% of rms(tracked - raw)", epoch, t.name, c["max_abs_diff"],
                 c["rms_diff"], 100 * c["rel_rms_diff"])
