"""The run folder: every file a run folder holds, and where it lies. Training, evaluation,
post-hoc EMA, the study launcher and the analysis stage find run files through `RunFolder`, and
nowhere else spell a file name. What `run.json` holds is explore.run.info; `eval/fid.csv`,
explore.run.results.

No torch import: analysis/ uses it without loading torch.

    <run>/
      config.yaml                      the resolved config of the last start (training)
      run.json                         the run's identity (`RunInfo`), written by training
      metrics.csv                      training, one row per epoch
      train.log                        the training log
      train.lock                       held (host, pid) while a training process writes here
      samples/epoch_NNNN.png           raw and EMA samples during training (trainer.sample_every)
      loggers.json                     ids of the MLflow / W&B runs this run logs into (logger=)
      tensorboard/                     TensorBoard event files (logger=tensorboard)
      wandb/                           W&B's run folders (logger=wandb)
      checkpoints/epoch_NNNN.pt        snapshots: what evaluation reads (explore.run.checkpoint)
      checkpoints/last.pt              the rolling resume state (optimizer, RNG, position)
      phema/snapshot_NNNNNNNNN.pt      power-function EMA snapshots (ema=posthoc)
      phema/reconstructed/epoch_NNNN_<weights>.pt   post-hoc EMAs (explore.posthoc)
      eval/fid.csv                     one row per measurement (`FID_COLUMNS`, keyed by `FID_KEY`)
      eval/fid.csv.lock                held (flock) while an evaluation adds a row
      eval/environments.json           {id: record} of the environments rows were made in
      eval/evaluate.log                the evaluation log
      eval/grids/epoch_NNNN_<weights>_<path>_s<seed>.png   sample grids (per sampling seed)
      eval/features/epoch_NNNN_<weights>_<path>_s<seed>_<hash>.npz   generated images' features,
                                       float16 (eval.keep_features=true)
      eval/heatmaps/<name>.npz|png     error heatmaps and their DP paths
      logs/                            submitit's job files (launch.study)

Weight-set names (``raw``, ``ema``, ``ema@<decay>``, ``phema@<sigma_rel>``, ``bema``) are the
averages' own: explore.ema.names.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.csv"
TRAIN_LOG = "train.log"
LOCK_FILE = "train.lock"
CHECKPOINT_DIR = "checkpoints"
LAST_FILE = f"{CHECKPOINT_DIR}/last.pt"
PHEMA_DIR = "phema"
RECONSTRUCTED_DIR = "reconstructed"
EVAL_DIR = "eval"
FID_FILE = f"{EVAL_DIR}/fid.csv"
ENVIRONMENTS_FILE_NAME = "environments.json"
EVAL_LOG = f"{EVAL_DIR}/evaluate.log"
GRIDS_DIR = f"{EVAL_DIR}/grids"
FEATURES_DIR = f"{EVAL_DIR}/features"
HEATMAPS_DIR = f"{EVAL_DIR}/heatmaps"
LOGS_DIR = "logs"
SAMPLES_DIR = "samples"
LOGGERS_FILE = "loggers.json"
TENSORBOARD_DIR = "tensorboard"

_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pt$")
_ORIGINAL_RE = re.compile(r"_(\d+)ep\.pth?$")  # the original study's lift_ema_400ep.pth


# -- the folder -------------------------------------------------------------------------------
class RunFolder:
    """Paths of one run folder (nothing is created until something is written)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    config = property(lambda self: self.path / CONFIG_FILE)
    run_json = property(lambda self: self.path / RUN_FILE)
    metrics = property(lambda self: self.path / METRICS_FILE)
    train_log = property(lambda self: self.path / TRAIN_LOG)
    lock = property(lambda self: self.path / LOCK_FILE)
    last = property(lambda self: self.path / LAST_FILE)
    checkpoint_dir = property(lambda self: self.path / CHECKPOINT_DIR)
    phema_dir = property(lambda self: self.path / PHEMA_DIR)
    reconstructed_dir = property(lambda self: self.path / PHEMA_DIR / RECONSTRUCTED_DIR)
    fid_csv = property(lambda self: self.path / FID_FILE)
    eval_log = property(lambda self: self.path / EVAL_LOG)
    eval_environments = property(lambda self: self.path / EVAL_DIR / ENVIRONMENTS_FILE_NAME)
    grids_dir = property(lambda self: self.path / GRIDS_DIR)
    features_dir = property(lambda self: self.path / FEATURES_DIR)
    heatmaps_dir = property(lambda self: self.path / HEATMAPS_DIR)
    logs_dir = property(lambda self: self.path / LOGS_DIR)
    samples_dir = property(lambda self: self.path / SAMPLES_DIR)
    loggers_json = property(lambda self: self.path / LOGGERS_FILE)
    tensorboard_dir = property(lambda self: self.path / TENSORBOARD_DIR)

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoint_dir / f"epoch_{epoch:04d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(epoch, path) of the snapshots checkpoints/epoch_NNNN.pt, oldest first."""
        folder = self.checkpoint_dir
        if not folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in folder.iterdir()
                 if (m := _EPOCH_RE.match(p.name))]
        return sorted(found)

    def written_folders(self) -> list[Path]:
        """The folders training writes to (where its stale temporaries can lie)."""
        return [self.path, self.checkpoint_dir, self.phema_dir, self.samples_dir]

    def eval_folders(self) -> list[Path]:
        """The folders evaluation writes to (where its stale temporaries can lie)."""
        return [self.path / EVAL_DIR, self.grids_dir, self.features_dir, self.heatmaps_dir]

    def samples(self, epoch: int) -> Path:
        """The sample grid made during training after epoch `epoch`."""
        return self.samples_dir / f"epoch_{epoch:04d}.png"

    def snapshot(self, step: int) -> Path:
        """A power-function EMA snapshot at optimizer step `step`."""
        return self.phema_dir / f"snapshot_{step:09d}.pt"

    def snapshots(self) -> list[Path]:
        return sorted(self.phema_dir.glob("snapshot_*.pt"))

    def reconstructed(self, epoch: int, weights: str) -> Path:
        return self.reconstructed_dir / f"epoch_{epoch:04d}_{weights}.pt"

    def reconstructions(self, epoch: int) -> list[Path]:
        return sorted(self.reconstructed_dir.glob(f"epoch_{epoch:04d}_*.pt"))

    def restarts(self, stage: str) -> Path:
        """How often a study job of this run was requeued (SLURM_RESTART_COUNT)."""
        return self.logs_dir / f"{stage}.restarts"

    def grid(self, epoch: int, weights: str, path: str, seed: int | None = None) -> Path:
        """A row's sample grid; `seed`: the sampling seed (rows of several seeds each have one)."""
        tail = "" if seed is None else f"_s{seed}"
        return self.grids_dir / f"epoch_{epoch:04d}_{weights}_{path}{tail}.png"

    def copies_grid(self, epoch: int, weights: str, path: str, seed: int) -> Path:
        """The 8 generated images closest to being copies, over their nearest training images."""
        return self.grids_dir / f"epoch_{epoch:04d}_{weights}_{path}_s{seed}_copies.png"

    def features(self, key: dict, row_key: tuple) -> Path:
        """Where the generated images' features of the row with `key` are kept: epoch,
        weights, path and seed in the name, a hash of its `row_key` (results.fid_row_key)
        after them."""
        digest = hashlib.sha1(repr(row_key).encode()).hexdigest()[:10]
        return self.features_dir / (f"epoch_{int(key['epoch']):04d}_{key['weights']}_"
                                    f"{key['path']}_s{key['sample_seed']}_{digest}.npz")

    def heatmap(self, name: str) -> Path:
        """The .npz of a cached heatmap (its figure: .with_suffix('.png'))."""
        return self.heatmaps_dir / f"{name}.npz"


def epoch_from_name(path: str | Path) -> int | None:
    """Epoch in a checkpoint's name: epoch_0400.pt or the original study's lift_ema_400ep.pth."""
    name = Path(path).name
    m = _EPOCH_RE.match(name) or _ORIGINAL_RE.search(name)
    return int(m.group(1)) if m else None


def find_run_dirs(roots) -> list[Path]:
    """Run folders at or below each root (a folder holding run.json), sorted, no repeats."""
    found: set[Path] = set()
    for root in map(Path, roots):
        if (root / RUN_FILE).is_file():
            found.add(root.resolve())
        found.update(p.parent.resolve() for p in root.rglob(RUN_FILE))
    return sorted(found)
