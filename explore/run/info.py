"""`run.json`: what a run is (`RunInfo`), written by training, read by evaluation and analysis.

No torch import: analysis/ uses it without loading torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from explore.core.files import atomic_write
from explore.run.folder import RUN_FILE


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
    bema: dict = field(default_factory=dict)  # a BEMA's settings (weight set `bema`), if tracked
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
    # what made it (explore.run.environment): the environment of the first start, every distinct
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
