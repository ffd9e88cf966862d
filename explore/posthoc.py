"""Post-hoc EMA: the EMA weights of any power-profile length, reconstructed after training from
the snapshots of the power-function EMAs tracked during training (Karras et al. 2024, EDM2,
section 3 and algorithm 3).

    python -m explore.train model=lift ema=posthoc ema.sigma_rels=[0.05,0.10]
    python -m explore.posthoc run_dir=outputs/lift_phema sigma_rel=[0.03,0.08,0.15]
    python -m explore.posthoc run_dir=... decay=[0.999]               # an exponential's length
    python -m explore.posthoc run_dir=... sigma_rel=[0.1] sources=[0.05] epochs=all   # a check
    python -m explore.evaluate run_dir=...          # scores raw, phema@0.05, ..., phema@0.03, ...

Sources: every snapshot `<run>/phema/snapshot_<step>.pt` and the tracked power EMAs stored in
every checkpoint (`emas`), taken once per (step, sigma_rel), at or before the target's step.
A source i is the power profile p_i(tau) = (g_i + 1) tau^g_i / t_i^(g_i + 1) on [0, t_i]
(exactly: the discrete update gives the raw weights of step k the integral of p_i over (k-1, k]).

Target at epoch E: the power profile p_r of the wanted sigma_rel (gamma_r) at step T, the step
of the tracked EMAs in checkpoint E. The weights are sum_i x_i * source_i with x the
least-squares fit of p_r by the p_i in L2([0, inf)):

    A x = b,   A_ij = <p_i, p_j>,   b_i = <p_i, p_r>,
    <p_a, p_b> = (g_a + 1)(g_b + 1) / (g_a + g_b + 1) * min(t_a, t_b)^(g_a + g_b + 1)
                 / (t_a^(g_a + 1) t_b^(g_b + 1))

solved in float64 (least squares, so repeated or nearly dependent sources do not break it),
then normalised to sum(x) = 1 so the result stays an average (EDM2 does the same). The fit's
quality is printed as the relative profile error ||sum_i x_i p_i - p_r|| / ||p_r||; the weights
are accumulated in float64 and stored in float32.

`decay=[d]` asks for the length of an exponential EMA of decay d at step T: its std,
sqrt(d) / (1 - d) optimizer steps, is matched by sigma_rel = sqrt(d) / ((1 - d) T), rounded to
3 significant digits (the weight-set name). Unlike that exponential EMA, the power profile puts
no weight on the initial weights.

Output: `<run>/phema/reconstructed/epoch_NNNN_phema@<sigma_rel>.pt` ({name, sigma_rel, gamma,
step, epoch, shadow, coefficients, sources, profile_error, ...}), which `explore.evaluate` scores
as the weight set `phema@<sigma_rel>` of epoch NNNN. A target equal to a tracked sigma_rel is
reconstructed too (with `sources=` leaving that profile out, it checks the method on your run:
the log and the file give the difference to the tracked weights), but evaluation uses the
tracked weights for that name. Existing files are kept unless force=true.

`posthoc(cfg)` is the plain function tests call; `main` is the Hydra wrapper (conf/posthoc.yaml).
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import checkpoint as ckpt
from .config import register_resolvers
from .ema import (
    SIGMA_REL_MAX,
    SNAPSHOT_DIR,
    phema_name,
    sigma_rel_to_gamma,
    strip_prefixes,
)
from .errors import ConfigError, UserError
from .files import atomic_write

log = logging.getLogger("explore.posthoc")

RECONSTRUCTED_DIR = "reconstructed"
FORMAT = "explore-phema-reconstruction/1"
POOR_FIT = 0.05  # relative profile error above which the log warns


class PosthocError(UserError):
    pass


# -- the maths -------------------------------------------------------------------------------------
def profile_inner(t_a, g_a, t_b, g_b) -> np.ndarray:
    """<p_a, p_b> of power profiles (t: length in steps, g: exponent), broadcast, float64."""
    t_a, g_a, t_b, g_b = (np.asarray(x, dtype=np.float64) for x in (t_a, g_a, t_b, g_b))
    t_min = np.minimum(t_a, t_b)
    # in logs: t^(g + 1) overflows float64 for long runs and sharp profiles
    log_value = ((g_a + g_b + 1) * np.log(t_min) - (g_a + 1) * np.log(t_a)
                 - (g_b + 1) * np.log(t_b))
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * np.exp(log_value)


@dataclass
class Fit:
    coefficients: np.ndarray  # one per source, summing to 1
    profile_error: float      # ||sum x_i p_i - p_r|| / ||p_r|| before normalisation
    raw_sum: float            # sum of the least-squares coefficients before normalisation


def solve_coefficients(src_steps, src_gammas, step: float, gamma: float) -> Fit:
    """Least-squares coefficients x of sources (src_steps, src_gammas) for the target profile
    (step, gamma): A x = b (module docstring), normalised to sum 1."""
    t = np.asarray(src_steps, dtype=np.float64)
    g = np.asarray(src_gammas, dtype=np.float64)
    if t.size == 0:
        raise PosthocError("no snapshots to reconstruct from")
    a = profile_inner(t[:, None], g[:, None], t[None, :], g[None, :])
    b = profile_inner(t, g, step, gamma)
    # scale to unit diagonal first: entries span many orders of magnitude (1/t factors)
    d = 1.0 / np.sqrt(np.diag(a))
    y, *_ = np.linalg.lstsq(a * d[:, None] * d[None, :], b * d, rcond=1e-13)
    x = y * d
    rr = float(profile_inner(step, gamma, step, gamma))
    err2 = max(0.0, float(x @ a @ x - 2 * x @ b + rr))
    raw_sum = float(x.sum())
    if abs(raw_sum) < 1e-12:
        raise PosthocError(f"the snapshots cannot represent the profile gamma={gamma:.3g} at "
                           f"step {step:.0f} (coefficients sum to {raw_sum:.3g})")
    return Fit(x / raw_sum, math.sqrt(err2 / rr), raw_sum)


def sigma_rel_for_decay(decay: float, step: int) -> float:
    """sigma_rel of the power profile whose std, at step `step`, equals that of an exponential
    EMA of `decay`: sqrt(decay) / ((1 - decay) * step), rounded to 3 significant digits."""
    decay = float(decay)
    sigma = float(f"{math.sqrt(decay) / ((1.0 - decay) * step):.3g}")
    if sigma >= SIGMA_REL_MAX:
        raise ConfigError(f"decay={decay} at step {step} is an average over "
                          f"{math.sqrt(decay) / (1 - decay):.0f} steps, longer than any power "
                          f"profile of a {step}-step run can be (sigma_rel {sigma:.3g} >= "
                          f"{SIGMA_REL_MAX:.3f}, a near-uniform average of the whole run)")
    return sigma


# -- sources ---------------------------------------------------------------------------------------
@dataclass
class Source:
    step: int
    name: str        # phema@<sigma_rel>
    sigma_rel: float
    gamma: float
    path: Path       # the snapshot or checkpoint that holds it (under `emas`)


@dataclass
class Target:
    name: str
    sigma_rel: float
    gamma: float
    from_decay: float | None = None
    fit: Fit | None = None
    sources: list[Source] = field(default_factory=list)


def _load(path: Path) -> dict | None:
    """A snapshot or checkpoint, memory-mapped (tensors are read when used); None, with a
    warning, when it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is skipped and named
        log.warning("skipping unreadable %s: %s", path, str(e).splitlines()[0] if str(e) else e)
        return None


def _power_states(state: dict | None) -> dict[str, dict]:
    emas = (state or {}).get("emas") or {}
    return {name: s for name, s in emas.items() if s.get("kind") == "phema"}


def find_sources(run_dir: Path, wanted: list[float] | None = None) -> list[Source]:
    """Every (step, sigma_rel) snapshot of the run's power EMAs, oldest first."""
    files = sorted((run_dir / SNAPSHOT_DIR).glob("snapshot_*.pt"))
    files += [p for _, p in ckpt.list_checkpoints(run_dir)]
    names = {phema_name(s) for s in wanted} if wanted else None
    found: dict[tuple[int, str], Source] = {}
    for path in files:
        for name, s in _power_states(_load(path)).items():
            if names is not None and name not in names:
                continue
            key = (int(s["step"]), name)
            if key[0] > 0 and key not in found:
                found[key] = Source(key[0], name, float(s["sigma_rel"]), float(s["gamma"]), path)
    if names is not None:
        lacking = names - {s.name for s in found.values()}
        if lacking:
            raise ConfigError(f"sources={sorted(lacking)} were not tracked in {run_dir}; it "
                              f"tracks {sorted({s.name for s in found.values()})}")
    return sorted(found.values(), key=lambda s: (s.step, s.sigma_rel))


# -- reconstruction --------------------------------------------------------------------------------
@torch.no_grad()
def reconstruct(targets: list[Target], sources: list[Source], step: int
                ) -> dict[str, dict[str, torch.Tensor]]:
    """The weights of every target at `step` (name -> {entry: float32 tensor}); each source file
    is read once, the sums are kept in float64."""
    usable = [s for s in sources if s.step <= step]
    for target in targets:
        target.sources = usable
        target.fit = solve_coefficients([s.step for s in usable], [s.gamma for s in usable],
                                        step, target.gamma)
    sums: dict[str, dict[str, torch.Tensor]] = {t.name: {} for t in targets}
    by_file: dict[Path, list[int]] = {}
    for i, s in enumerate(usable):
        by_file.setdefault(s.path, []).append(i)
    for path, indices in by_file.items():
        states = _power_states(_load(path))
        for i in indices:
            shadow = states[usable[i].name]["shadow"]
            for target in targets:
                acc, c = sums[target.name], float(target.fit.coefficients[i])
                for k, v in shadow.items():
                    k = strip_prefixes(k)
                    if k not in acc:
                        acc[k] = torch.zeros(v.shape, dtype=torch.float64)
                    acc[k].add_(v.double(), alpha=c)
    return {name: {k: v.float() for k, v in acc.items()} for name, acc in sums.items()}


def compare(weights: dict[str, torch.Tensor], tracked: dict[str, torch.Tensor],
            raw: dict[str, torch.Tensor]) -> dict[str, float]:
    """Reconstructed vs tracked weights: max |diff|, rms(diff), and rms(diff) relative to
    rms(tracked - raw) (how far the average is from the raw weights)."""
    n, sq, ref, worst = 0, 0.0, 0.0, 0.0
    for k, v in tracked.items():
        d = (weights[k].double() - v.double())
        n += d.numel()
        sq += d.square().sum().item()
        ref += (v.double() - raw[k].double()).square().sum().item()
        worst = max(worst, d.abs().max().item()) if d.numel() else worst
    rms = math.sqrt(sq / max(n, 1))
    return {"max_abs_diff": worst, "rms_diff": rms,
            "rel_rms_diff": rms / math.sqrt(ref / max(n, 1)) if ref > 0 else math.nan}


def reconstructed_path(run_dir: str | Path, epoch: int, name: str) -> Path:
    return Path(run_dir) / SNAPSHOT_DIR / RECONSTRUCTED_DIR / f"epoch_{epoch:04d}_{name}.pt"


# -- the app ---------------------------------------------------------------------------------------
def _as_list(value) -> list:
    """A config value given as a list or as one item (sigma_rel=0.1, epochs=6)."""
    if value is None:
        return []
    return list(value) if OmegaConf.is_list(value) or isinstance(value, list | tuple) else [value]


def _targets(cfg: DictConfig, step: int | None) -> list[Target]:
    """The wanted profiles at `step`; an exponential decay too long for that step is skipped
    with a warning (with epochs=all it may fit later epochs). step=None: check the config."""
    if not (_as_list(cfg.sigma_rel) or _as_list(cfg.decay)):
        raise ConfigError("nothing to reconstruct: give sigma_rel=[...] and/or decay=[...]")
    targets = []
    for s in _as_list(cfg.sigma_rel):
        try:
            targets.append(Target(phema_name(s), float(s), sigma_rel_to_gamma(s)))
        except ValueError as e:
            raise ConfigError(f"sigma_rel={s}: {e}") from e
    for d in _as_list(cfg.decay):
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


def _epochs(cfg: DictConfig, run_dir: Path) -> list[tuple[int, Path]]:
    found = ckpt.list_checkpoints(run_dir)
    if not found:
        raise ConfigError(f"run_dir={run_dir} has no checkpoints: train it first")
    if cfg.epochs is None:
        return found[-1:]
    if str(cfg.epochs) == "all":
        return found
    wanted = {int(e) for e in _as_list(cfg.epochs)}
    missing = wanted - {e for e, _ in found}
    if missing:
        raise ConfigError(f"epochs={sorted(missing)} have no checkpoint; there are "
                          f"{[e for e, _ in found]}")
    return [(e, p) for e, p in found if e in wanted]


def posthoc(cfg: DictConfig) -> list[Path]:
    """Reconstruct the requested post-hoc EMAs at the chosen epochs; returns the files written."""
    if not cfg.run_dir:
        raise ConfigError("give run_dir=<run folder trained with ema=posthoc>")
    run_dir = Path(cfg.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir={run_dir} does not exist")
    _targets(cfg, None)  # a bad target is an error before any file is read
    epochs = _epochs(cfg, run_dir)
    sources = find_sources(run_dir, _as_list(cfg.sources) or None)
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
    state = _load(path)
    tracked = _power_states(state)
    if state is None or not tracked:
        raise PosthocError(f"{path} holds no power-function EMA (was the run trained with "
                           f"ema=posthoc?)")
    step = int(next(iter(tracked.values()))["step"])
    targets = [t for t in _targets(cfg, step)
               if cfg.force or not reconstructed_path(run_dir, epoch, t.name).is_file()]
    if not targets:
        log.info("epoch %d: already reconstructed (force=true to redo)", epoch)
        return []
    weights = reconstruct(targets, sources, step)
    out = []
    for t in targets:
        info = {"format": FORMAT, "kind": "phema", "name": t.name, "sigma_rel": t.sigma_rel,
                "gamma": t.gamma, "from_decay": t.from_decay, "epoch": epoch, "step": step,
                "init_weight": 0.0, "window_steps": t.sigma_rel * step,
                "coefficients": t.fit.coefficients.tolist(),
                "sources": [[s.step, s.sigma_rel] for s in t.sources],
                "profile_error": t.fit.profile_error, "coefficient_sum": t.fit.raw_sum}
        if t.name in tracked:
            info["check"] = compare(weights[t.name], tracked[t.name]["shadow"],
                                    state["model_state"])
        _log_target(epoch, step, t, info)
        p = reconstructed_path(run_dir, epoch, t.name)
        if p.is_file():  # force=true: evaluation made from the old weights is now stale
            log.warning("replacing %s: rescore it with python -m explore.evaluate run_dir=%s "
                        "eval.force=true eval.weights=[%s] eval.epochs=[%d] after deleting its "
                        "cached heatmaps %s", p.name, run_dir, t.name, epoch,
                        run_dir / "eval" / "heatmaps" / f"epoch_{epoch:04d}_{t.name}_*")
        atomic_write(p, lambda f, obj={**info, "shadow": weights[t.name]}: torch.save(obj, f))
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


register_resolvers()


@hydra.main(config_path="../conf", config_name="posthoc", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        written = posthoc(cfg)
    except UserError as err:
        log.error("%s", err)
        sys.exit(1)
    for p in written:
        print(p)


if __name__ == "__main__":
    main()
