"""The run folder contract: every file a run folder holds, `run.json`, `eval/fid.csv`, and the
names of weight sets. Training, evaluation, post-hoc EMA, the study launcher and the analysis
stage all read and write run folders through this module, and nowhere else spell a file name.

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
      checkpoints/epoch_NNNN.pt        snapshots: what evaluation reads (explore.checkpoint)
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

Weight-set names: ``raw`` (the optimizer's weights), ``ema`` (the run's primary EMA),
``ema@<decay>`` (another tracked decay), ``phema@<sigma_rel>`` (a power-function EMA, tracked or
reconstructed post hoc). `weights_name` writes them, `parse_weights` reads them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .files import atomic_write, exclusive, write_text

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

# an EMA whose post-init share (1 - weight left on the initial weights) is below this is
# "still mostly its initial weights": flagged in the log, fid.csv and the report (seed 004)
EMA_SHARE_LOW = 0.5

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

    def features(self, key: dict) -> Path:
        """Where the generated images' features of the row with `key` (FID_KEY) are kept:
        epoch, weights, path and seed in the name, a hash of the whole key after them."""
        import hashlib

        digest = hashlib.sha1(repr(fid_row_key(key)).encode()).hexdigest()[:10]
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


# -- run.json ---------------------------------------------------------------------------------
@dataclass
class RunInfo:
    """What a run is (run.json): written by training, read by evaluation and analysis.

    Older run.json files lack some fields; they read as the defaults below.
    """

    run: str
    model: str | None = None              # baseline | lift
    seed: int | None = None               # training seed
    ema_decay: float | None = None        # the primary EMA's decay (None: no EMA or a power EMA)
    ema_decays: list = field(default_factory=list)       # every tracked exponential decay
    ema_half_lives_kimg: list = field(default_factory=list)  # their half-lives at batch_size
    ema_sigma_rels: list = field(default_factory=list)   # every tracked power-function EMA
    schedule: dict = field(default_factory=dict)         # the noise schedule (its describe())
    dataset: str | None = None            # the training images' content id
    image_size: int | None = None
    num_images: int | None = None
    epochs: int | None = None             # planned epochs
    steps_per_epoch: int | None = None    # optimizer steps per epoch
    batch_size: int | None = None
    device: str | None = None
    changes: list = field(default_factory=list)  # settings changed on resume (optim.lr)
    source: str = "training"              # training | checkpoint (a lone checkpoint's folder)
    # what made it (explore.environment): the environment of the first start, every distinct
    # environment that trained it (in order), and the starts, resumes and fall-backs
    environment: dict = field(default_factory=dict)
    environments: list = field(default_factory=list)
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def read_run_info(run_dir: str | Path) -> RunInfo | None:
    """The run's run.json, or None when it has none; unknown keys are ignored."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    known = {f.name for f in fields(RunInfo)}
    data.setdefault("run", Path(run_dir).name)
    return RunInfo(**{k: v for k, v in data.items() if k in known})


def write_run_info(run_dir: str | Path, info: RunInfo) -> Path:
    return atomic_write(Path(run_dir) / RUN_FILE,
                        lambda f: f.write(json.dumps(info.to_dict(), indent=2).encode()))


# -- eval/fid.csv -----------------------------------------------------------------------------
FID_COLUMNS = ["run", "model", "seed", "ema_decay", "dataset", "image_size", "epoch", "step",
               "weights", "path", "sample_seed", "num_steps", "num_images", "num_real",
               "subset_seed", "extractor", "schedule", "final_step", "fid", "kid", "kid_std",
               "precision", "recall", "memorization", "memorization_px", "ema_share",
               "ema_share_low", "lag_epochs", "sigma_rel", "half_life_kimg", "seconds",
               "boot_seed", "fid_boot", "environment"]
# `seed` is the training seed (the run's), `sample_seed` the sampling seed of the generated
# images (eval.seeds); `num_real` real images, a subset of the training images drawn with
# `subset_seed` (eval.subset_seed; all of them when num_images >= the training set).
# `environment`: the id of the software and machine that made the row (explore.environment;
# its record in eval/environments.json).
# `fid_boot`: bootstrap replicate FIDs over the generated images' features (space-separated;
# `replicates`), made with resample indices drawn from `boot_seed`, the sampling seed and the
# image count only, so replicate b of every weight set and epoch resamples the same images.
#
# what makes two rows the same measurement. The protocol is part of it: a number made with
# another extractor, image count, step count, noise schedule, final DDIM step or real subset is
# another row, never a replacement; so is one made from another sampling seed.
FID_KEY = ("epoch", "weights", "path", "sample_seed", "num_steps", "num_images", "extractor",
           "schedule", "final_step", "subset_seed")
# the protocol: numbers made under different values of these are never compared (STUDY.md)
PROTOCOL_COLUMNS = ["dataset", "image_size", "num_images", "num_steps", "extractor", "schedule",
                    "final_step", "subset_seed"]
# rows written before these columns existed were made with the unclipped cosine schedule, a
# last DDIM step to alpha_bar 1, and eval.seed 42 (the default), which then also drew the real
# subset
LEGACY_VALUES = {"schedule": "cosine", "final_step": "alpha_one", "sample_seed": "42",
                 "subset_seed": "42"}
# eval.metrics -> the columns each fills
METRIC_COLUMNS = {"fid": ("fid",), "kid": ("kid", "kid_std"), "prc": ("precision", "recall"),
                  "memorization": ("memorization",)}


def format_replicates(values) -> str:
    """Bootstrap replicates as fid.csv holds them: space-separated, 4 decimals."""
    return " ".join(f"{float(v):.4f}" for v in values)


def parse_replicates(text) -> list[float]:
    """The replicates of a `fid_boot` cell ([] when empty or unreadable)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    try:
        return [float(v) for v in str(text).split()]
    except ValueError:
        return []


def fid_row_key(row: dict) -> tuple[str, ...]:
    return tuple(str(row[k]) for k in FID_KEY)


class ResultsFile:
    """`<run>/eval/fid.csv`, rewritten atomically after every finished row, so an interrupted
    evaluation loses no finished row and never leaves half a file.

    Several evaluations of one run folder may run at once (two terminals, a study re-run, more
    seeds added while a SLURM evaluation runs): each `add` takes an OS lock on `fid.csv.lock`,
    re-reads the file, adds its row and writes the whole file before letting the next writer
    in, so every process keeps every row the others wrote (a read-once, write-from-memory file
    would keep only the last writer's rows). The environments rows name (`environment` column)
    are merged into `eval/environments.json` under the same lock.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.environments_path = self.path.with_name(ENVIRONMENTS_FILE_NAME)
        self.rows: list[dict] = []
        self.refresh()

    def refresh(self) -> None:
        """Re-read the rows from disk (another evaluation may have added some)."""
        self.rows = read_results(self.path)

    def has(self, key: tuple[str, ...]) -> bool:
        return self.get(key) is not None

    def get(self, key: tuple[str, ...]) -> dict | None:
        """The row with this key (fid_row_key), or None."""
        return next((r for r in self.rows if fid_row_key(r) == key), None)

    def add(self, row: dict, environment: dict | None = None) -> None:
        """Add a row (replacing one with the same key) to what is on disk now, and rewrite the
        file; `environment`: the record of the row's `environment` id, kept beside it."""
        key = fid_row_key(row)
        with exclusive(self.lock_path):
            rows = [r for r in read_results(self.path) if fid_row_key(r) != key] + [row]
            rows.sort(key=lambda r: (int(r["epoch"]), str(r["weights"]), str(r["path"]),
                                     int(r["sample_seed"])))
            columns = FID_COLUMNS + sorted({k for r in rows for k in r} - set(FID_COLUMNS))
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            write_text(self.path, buf.getvalue())
            if environment is not None:
                known = read_json(self.environments_path) or {}
                if environment.get("id") not in known:
                    known[environment["id"]] = environment
                    write_text(self.environments_path, json.dumps(known, indent=2))
        self.rows = rows


def read_results(path: str | Path) -> list[dict]:
    """The rows of a fid.csv (legacy protocol values filled in); [] when there is none."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [with_legacy_values(r) for r in csv.DictReader(f)]


def read_json(path: str | Path):
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def with_legacy_values(row: dict) -> dict:
    """A fid.csv row with the protocol values rows from before their column had."""
    return {**row, **{k: v for k, v in LEGACY_VALUES.items() if not row.get(k)}}


# -- weight-set names -------------------------------------------------------------------------
def fmt_value(x: float) -> str:
    """Shortest faithful text of a decay or sigma_rel (0.9999, not 0.9999000001 nor 1)."""
    return f"{float(x):.10g}"


def ema_name(decay: float) -> str:
    """Weight-set name of an exponential EMA: ema@0.999."""
    return f"ema@{fmt_value(decay)}"


def phema_name(sigma_rel: float) -> str:
    """Weight-set name of a power-function (post-hoc) EMA: phema@0.1."""
    return f"phema@{fmt_value(sigma_rel)}"


@dataclass(frozen=True)
class WeightsName:
    """A parsed weight-set name."""

    kind: str          # raw | ema | phema | other
    decay: float       # the exponential decay (NaN for raw, phema, other)
    sigma_rel: float   # the power profile's sigma_rel (NaN unless phema)
    id: str            # canonical name: `ema` of a 0.999 run and `ema@0.999` are both ema@0.999
    label: str         # for tables: "raw", "EMA 0.9999", "post-hoc EMA σrel 0.1"


def parse_weights(weights: str, primary_decay: float | None = None) -> WeightsName:
    """Read a weight-set name; ``ema`` is the run's primary decay (`primary_decay`), so ``ema``
    of a 0.999 run and ``ema@0.999`` of a 0.9999 run are the same average."""
    name, _, arg = str(weights).partition("@")
    nan = math.nan
    try:
        value = float(arg) if arg else nan
    except ValueError:
        return WeightsName("other", nan, nan, str(weights), str(weights))
    if name == "raw" and not arg:
        return WeightsName("raw", nan, nan, "raw", "raw")
    if name == "ema":
        decay = value if arg else primary_decay
        if decay is None or (isinstance(decay, float) and math.isnan(decay)):
            return WeightsName("ema", nan, nan, "ema", "EMA")  # a run that names no decay
        return WeightsName("ema", float(decay), nan, ema_name(decay), f"EMA {fmt_value(decay)}")
    if name == "phema" and arg:
        return WeightsName("phema", nan, value, phema_name(value),
                           f"post-hoc EMA σrel {fmt_value(value)}")
    return WeightsName("other", nan, nan, str(weights), str(weights))
