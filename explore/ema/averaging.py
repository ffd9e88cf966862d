"""What the training loop holds: one or several tracks (`tensors.Track`) updated together after
every optimizer step, one of which is the run's primary average.

    ema.plan(total_steps)                   # before training (PostHocEMA: snapshot_every=auto)
    optimizer.step(); ema.update()          # after every optimizer step
    if ema.snapshot_due():                  # PostHocEMA only: the loop writes the file
        save_file(ema.snapshot(), RunFolder(run_dir).snapshot(ema.step))
    torch.save({**ema.checkpoint_entries(), ...})      # ema_state, ema_decay, emas
    ema.load_checkpoint_entries(saved)                 # exact resume of every track

Checkpoint layout (`checkpoint_entries()`): `ema_state` = the primary track's state (the first
decay, or `primary`; the original study's {decay, shadow, ...} layout, so single-decay readers
keep working), `ema_decay` = its decay, and `emas` = {weight-set name: state} for every track,
e.g. {"ema@0.9999": ..., "ema@0.999": ...} or {"phema@0.05": ..., "phema@0.1": ...}, plus
{"bema": ...} with a BEMA; the primary's state is the same object in both places, so torch.save
stores its tensors once. One track's state is read by `explore.ema.state.track_info`.
"""

from __future__ import annotations

import torch

from explore.ema.tensors import EMAStateError, LiveTensors, Track


class Averaging:
    """The training-loop interface: `tracks` updated together after each optimizer step, one
    of which (`primary`) is the run's `ema_state`."""

    live: LiveTensors
    tracks: list[Track]
    primary: Track
    step: int  # optimizer steps seen

    @torch.no_grad()
    def update(self) -> None:
        """Call once after every optimizer step."""
        plan = [(track, track._advance()) for track in self.tracks]
        plan = [(track, w) for track, w in plan if w is not None]
        if not plan:
            return
        sources, others = self.live.sources(), self.live.others()
        for track, weight in plan:
            track._absorb(sources, others, weight)

    # -- snapshots: only PostHocEMA takes them; the training loop writes the files -----------------
    def plan(self, total_steps: int | None) -> None:
        """Tell the average the planned optimizer steps of the run (PostHocEMA: how often
        snapshot_every=auto snapshots)."""

    def snapshot_due(self) -> bool:
        """Whether the update just made should be saved as a snapshot (never, here)."""
        return False

    def snapshot(self) -> dict:
        """Every track's state at this step: {"step", "emas": {name: state}}."""
        return {"step": self.step, "emas": {t.name: t.state_dict() for t in self.tracks}}

    # -- the tracks --------------------------------------------------------------------------------
    @property
    def decays(self) -> list[float]:
        """Decays of the exponential tracks, primary first."""
        return [t.decay for t in self._ordered() if t.kind == "ema"]

    @property
    def sigma_rels(self) -> list[float]:
        """sigma_rel of the power-function tracks, primary first."""
        return [t.sigma_rel for t in self._ordered() if t.kind == "phema"]

    def _ordered(self) -> list[Track]:
        return [self.primary] + [t for t in self.tracks if t is not self.primary]

    def track(self, name: str) -> Track:
        """The track named `name` (ema@0.999, phema@0.1)."""
        for t in self.tracks:
            if t.name == name:
                return t
        raise KeyError(f"no EMA track {name!r}; tracks: {[t.name for t in self.tracks]}")

    def metrics(self) -> dict[str, float]:
        """metrics.csv columns: ema_<stat> for the primary exponential track, ema_<stat>@<decay>
        for the other decays, phema_<stat>@<sigma_rel> for power-function tracks, bema_<stat>
        for the BEMA (one per run: its name has no @)."""
        row: dict[str, float] = {}
        for t in self._ordered():
            plain = (t is self.primary and t.kind == "ema") or "@" not in t.name
            suffix = "" if plain else "@" + t.name.split("@")[1]
            row.update({f"{t.kind}_{k}{suffix}": v for k, v in t.delta_stats().items()})
        return row

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint_entries(self) -> dict:
        """ema_state (primary), ema_decay and emas (every track) for a training checkpoint."""
        states = {t.name: t.state_dict() for t in self.tracks}
        primary = states[self.primary.name]
        return {"ema_state": primary, "ema_decay": primary["decay"], "emas": states}

    def load_checkpoint_entries(self, saved: dict, source: str = "the checkpoint") -> None:
        """Restore every track from a checkpoint's `emas` (or, for a checkpoint without them,
        the primary from `ema_state`); a track the checkpoint lacks is an error."""
        ema_state = saved.get("ema_state")
        if ema_state is None:
            raise EMAStateError(f"{source} was trained without EMA (ema_state is empty)")
        if saved.get("emas"):
            states = saved["emas"]
        elif len(self.tracks) == 1:  # an older layout, or the original study's: ema_state only
            states = {self.primary.name: ema_state}
        else:
            states = {ema_state.get("name", "ema"): ema_state}
        missing = [t.name for t in self.tracks if t.name not in states]
        if missing:
            raise EMAStateError(f"{source} holds EMA tracks {sorted(states)}, not {missing}")
        for t in self.tracks:
            t.load_state_dict(states[t.name])


class SingleTrack(Averaging):
    """An average that is a track itself (`EMA`, `BEMA` standalone): its own only track, and
    the primary one."""

    @property
    def tracks(self) -> list[Track]:
        return [self]

    @property
    def primary(self) -> Track:
        return self


class Bank(Averaging):
    """Several tracks over one view of the model, updated in one pass (one cast, one foreach
    kernel per shadow)."""

    def __init__(self, live: LiveTensors, tracks: list[Track], primary: int = 0):
        names = [t.name for t in tracks]
        if len(set(names)) != len(names):
            raise ValueError(f"EMA tracks repeat: {names}")
        if not tracks:
            raise ValueError("an EMA bank needs at least one track")
        self.live = live
        self.tracks = tracks
        self.primary = tracks[primary]

    @property
    def decay(self) -> float | None:
        return self.primary.decay

    @property
    def start_step(self) -> int:
        return self.primary.start_step

    @property
    def step(self) -> int:
        return self.primary.step

    def delta_stats(self) -> dict[str, float]:
        return self.primary.delta_stats()

    def average_parameters(self, name: str | None = None):
        """Evaluate with one track's weights inside the block (the primary's by default)."""
        return (self.track(name) if name else self.primary).average_parameters()

    def state_dict(self) -> dict:
        return {"primary": self.primary.name,
                "emas": {t.name: t.state_dict() for t in self.tracks}}

    def load_state_dict(self, state: dict) -> None:
        self.load_checkpoint_entries({"ema_state": state["emas"][state["primary"]], **state})
