"""Starting a training run: where to continue from, whether that is the same experiment, and
what the run folder records about itself (config.yaml, run.json, the first log lines).

Everything here before `write_run_start` only reads, so a refused or failed start leaves the
run folder as it was.
"""

from __future__ import annotations

import copy
import datetime
import logging
from pathlib import Path

import yaml

from explore.core.config import CONF_DIR, upgrade_targets
from explore.core.errors import ConfigError
from explore.core.files import atomic_write
from explore.ema.decay import averaging_window, half_life_kimg_for_decay
from explore.nets.data import DataError, ImageSet
from explore.run import checkpoint as ckpt
from explore.run.environment import describe as describe_env
from explore.run.environment import differences
from explore.run.folder import RunFolder
from explore.run.info import RunInfo, write_run_info
from explore.training.settings import TrainSettings
from explore.training.state import RunState
from explore.training.step import Training, set_rng_state

log = logging.getLogger("explore.train")

# Settings that define what a run *is*: resuming with any of them changed would silently
# produce a different experiment under the old name.
IDENTITY_KEYS = ("model", "data", "diffusion", "ema", "optim", "seed", "trainer.batch_size",
                 "trainer.grad_accum", "trainer.grad_clip")
# ... except these, which a resume may change (the non-finite-loss advice: a lower optim.lr);
# the change is logged and kept in the run's history (`changes` in run.json and checkpoints)
MAY_CHANGE = ("optim.lr", "optim.optimizer.lr")
# ... and these copy another identity key (trainer.batch_size), so they never differ on their own
DERIVED = ("ema.batch_size",)


def resume_point(settings: TrainSettings, run: RunFolder
                 ) -> tuple[tuple[Path, dict] | None, list[str]]:
    """The state to continue from with resume=true: last.pt, or when it is missing or broken
    the newest snapshot (optimizer reset), and the notes that say so (the caller writes them
    to train.log and to the run's history once it holds the run folder). A run folder that
    already holds checkpoints without resume=true, or a resume with another experiment's
    config, is an error."""
    notes: list[str] = []
    if not settings.resume:
        if run.checkpoints() or run.last.is_file():
            newest = run.last if run.last.is_file() else run.checkpoints()[-1][1]
            raise ConfigError(f"{run.path} already holds checkpoints (newest: {newest.name}); "
                              f"pass resume=true to continue that run, or choose another "
                              f"hydra.run.dir for a new one")
        return None, notes
    found = None
    if run.last.is_file():
        try:
            found = run.last, ckpt.load_checkpoint(run.last)
        except ckpt.CheckpointError as e:
            notes.append(f"the resume state is unusable ({e}): falling back to the newest "
                         f"snapshot")
    if found is None:
        found = ckpt.latest_valid_checkpoint(run.path, log=notes.append)
        if found is not None and "optimizer" not in found[1]:
            notes.append(f"resuming from the snapshot {found[0]}: it holds no optimizer state, "
                         f"so AdamW restarts its moments (not bit-identical to an "
                         f"uninterrupted run)")
    if found is None:
        log.info("resume=true but %s has no checkpoint yet: starting from scratch", run.path)
        return None, notes
    diffs = config_differences(found[1].get("config") or {}, settings.config)
    if diffs:
        raise ConfigError(f"resume=true, but the config differs from the one {found[0]} "
                          f"was trained with: {'; '.join(diffs)}. Start a new run folder "
                          f"for a different experiment.")
    return found, notes


def _get(tree, key: str):
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _without(tree: dict, keys) -> dict:
    tree = copy.deepcopy(tree)
    for key in keys:
        *parents, last = key.split(".")
        node = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return tree


def _added(old, new, prefix: str = "") -> list[str]:
    """Keys of `new` that `old` lacks and that are null or derived (options added to the config
    since `old` was saved, left at their "off" default): not a difference."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []
    out = []
    for key, value in new.items():
        path = f"{prefix}{key}"
        if key not in old and (value is None or path in DERIVED):
            out.append(path)
        elif key in old:
            out += _added(old[key], value, path + ".")
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """The IDENTITY_KEYS that differ (MAY_CHANGE excepted), as "key: old -> new"."""
    if old and "diffusion" not in old:  # saved before the schedule was recorded: the cosine one
        old = {**old, "diffusion": yaml.safe_load(
            (CONF_DIR / "diffusion" / "cosine.yaml").read_text())}
    old, new = upgrade_targets(old), upgrade_targets(new)  # a module moved: the same classes
    added = _added(old, new)
    old = _without(old, [*MAY_CHANGE, *DERIVED])
    new = _without(new, [*MAY_CHANGE, *DERIVED, *added])
    return [f"{key}: {_get(old, key)} -> {_get(new, key)}" for key in IDENTITY_KEYS
            if _get(old, key) != _get(new, key)]


def restore(training: Training, found: tuple[Path, dict], settings: TrainSettings) -> RunState:
    """Load the state into `training`; apply (and record) a changed optim.lr."""
    path, saved = found
    training.load_state_dict(saved, source=path)
    state = RunState.from_dict(saved)
    if "rng" in saved:
        set_rng_state(saved["rng"])
    old, new = _get(saved.get("config") or {}, "optim.lr"), float(settings.optim.lr)
    if old is not None and float(old) != new:
        training.set_lr(new)
        state.changes.append({"epoch": state.epoch, "step": state.step,
                              "setting": "optim.lr", "from": float(old), "to": new})
        log.warning("optim.lr changed on resume at step %d: %g -> %g (recorded in the run's "
                    "history)", state.step, float(old), new)
    return state


def batches_per_epoch(data: ImageSet, batch_size: int) -> int:
    steps = len(data) // int(batch_size)
    if steps == 0:
        raise DataError(f"{data.name} has {len(data)} images, fewer than one batch of "
                        f"trainer.batch_size={batch_size}")
    return steps


def record_start(state: RunState, environment: dict, found: tuple[Path, dict] | None,
                 notes: list[str]) -> None:
    """Add this start to the run's history: a start or a resume (from which file, in which
    environment), the fall-backs of `notes`, and the environment when it is new to the run;
    a resume in another environment is logged (a warning when torch differs)."""
    now = datetime.datetime.now().isoformat(timespec="seconds")
    where = {"time": now, "epoch": state.epoch, "step": state.step}
    previous = state.environments[-1] if state.environments else None
    if previous is not None and previous.get("id") != environment["id"]:
        changed = differences(previous, environment)
        if previous.get("torch") != environment.get("torch"):
            log.warning("this run was trained so far with torch %s and resumes with torch %s: "
                        "its numbers may differ from an uninterrupted run's (recorded in "
                        "run.json's environments)", previous.get("torch"), environment["torch"])
        log.info("resuming in another environment (%s): %s", environment["id"],
                 "; ".join(changed) or "no number-shaping change")
    if environment["id"] not in {e.get("id") for e in state.environments}:
        state.environments.append({**environment, "since_epoch": state.epoch,
                                   "since_step": state.step})
    for note in notes:
        log.warning("%s", note)
        state.events.append({"event": "fallback", **where, "message": note})
    state.events.append({"event": "resume" if found is not None else "start", **where,
                         **({"from": found[0].name} if found is not None else {}),
                         "environment": environment["id"], "host": environment["hostname"]})


def write_run_start(run: RunFolder, settings: TrainSettings, training: Training,
                    data: ImageSet, steps_per_epoch: int, state: RunState) -> None:
    """config.yaml and run.json, and the start of the log: what this run is."""
    ema, epochs, batch = training.ema, int(settings.trainer.epochs), settings.trainer.batch_size
    atomic_write(run.config, lambda f: f.write(
        yaml.safe_dump(settings.config, sort_keys=False).encode()))
    write_run_info(run.path, RunInfo(
        run=run.name, model=training.kind, seed=int(settings.seed),
        ema_decay=ema.decay if ema is not None else None,
        ema_decays=ema.decays if ema is not None else [],
        ema_half_lives_kimg=[round(half_life_kimg_for_decay(d, batch), 4)
                             for d in (ema.decays if ema is not None else [])],
        ema_sigma_rels=ema.sigma_rels if ema is not None else [],
        schedule=training.schedule.describe(), dataset=data.name, image_size=data.image_size,
        num_images=len(data), epochs=epochs, steps_per_epoch=steps_per_epoch,
        batch_size=int(batch), device=str(training.device),
        bema=ema.track("bema").settings if ema is not None and any(
            t.kind == "bema" for t in ema.tracks) else {},
        changes=state.changes, environment=state.environments[0] if state.environments else {},
        environments=state.environments, history=state.events))
    model, schedule = training.model, training.schedule
    log.info("%s: %s, %.2fM parameters, %d images (%s), %d steps/epoch, device %s, noise "
             "schedule %s (alpha_bar %.4g .. %.3g)", run.path, type(model).__name__,
             sum(p.numel() for p in model.parameters()) / 1e6, len(data), data.name,
             steps_per_epoch, training.device, schedule.name, schedule.alpha_bar[0],
             schedule.alpha_bar[-1])
    if state.environments:
        log.info("environment %s: %s", state.environments[-1]["id"],
                 describe_env(state.environments[-1]))
    if ema is not None:
        describe_ema(ema, steps_per_epoch, epochs, int(batch))


def describe_ema(ema, steps_per_epoch: int, total_epochs: int, batch_size: int) -> None:
    """Print every tracked average's window (lag), and warn when an EMA's window is long for the
    planned run: an EMA evaluated while it is still mostly its initial weights hides what
    training achieved."""
    total_steps = steps_per_epoch * total_epochs
    for track in ema.tracks:
        if track.kind == "bema":  # no decay of its own: mu's schedule and the bias weight
            first, last = track.schedule(track.update_every), track.schedule(
                max(track.update_every, total_steps - track.burn_in))
            log.info("%s: bias-corrected EMA (%s); mu's window %.0f -> %.0f optimizer steps "
                     "and bias weight alpha %.3f -> %.3f over the run (%d steps)", track.name,
                     ", ".join(f"{k} {v:g}" for k, v in track.settings.items()),
                     track.update_every / first[0], track.update_every / last[0], first[1],
                     last[1], total_steps)
            continue
        if track.kind == "phema":  # a power profile keeps a fixed fraction of the run
            log.info("%s: power-function EMA, gamma %.2f; window sigma_rel x t = %.0f optimizer "
                     "steps = %.2f epochs at the end of the run (%d steps)", track.name,
                     track.gamma, track.sigma_rel * total_steps,
                     track.sigma_rel * total_epochs, total_steps)
            continue
        window = averaging_window(track.decay)
        half = half_life_kimg_for_decay(track.decay, batch_size)
        log.info("%s: decay %.10g per step = half-life %.4g kimg (%.0f steps of %d images, %.2f "
                 "epochs); averaging window %.0f optimizer steps = %.2f epochs (%d steps/epoch; "
                 "run: %d epochs = %d steps)", track.name, track.decay, half,
                 half * 1000 / batch_size, batch_size, half * 1000 / batch_size / steps_per_epoch,
                 window, window / steps_per_epoch, steps_per_epoch, total_epochs, total_steps)
        share = track.planned_share(total_steps)
        if window > total_steps / 3 and share < 1:
            log.warning("EMA window (%.0f steps) is longer than a third of the planned run "
                        "(%d steps): at the end only %.0f%% of the EMA comes from trained "
                        "weights, the rest is the initialisation. Its samples will hide "
                        "training progress; lower ema.decay (e.g. %s) or train longer.", window,
                        total_steps, 100 * share, _suggest_decay(total_steps))


def _suggest_decay(total_steps: int) -> float:
    for d in (0.9999, 0.999, 0.99, 0.9):
        if averaging_window(d) <= total_steps / 10:
            return d
    return 0.9
