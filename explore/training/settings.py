"""The settings of one training run as typed values: what `explore.train` reads from the config
(conf/train.yaml and its groups) and hands down. Nothing below the entry point reads the config;
the nodes that build objects (`model`, `data`, `diffusion`, `ema`, `optim.optimizer`, `logger`)
travel as plain dicts with their `_target_`.

    settings = TrainSettings.from_config(plain_config)   # checks every value, naming the bad one

Each field's default is the reference setting; conf/ holds the same values with their costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from explore.core.errors import ConfigError
from explore.core.settings import from_node

PRECISIONS = ("32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainerSettings:
    epochs: int = 2000
    batch_size: int = 64          # images per optimizer step; the last partial batch is dropped
    grad_accum: int = 1           # micro-batches per optimizer step
    grad_clip: float | None = 1.0  # max global gradient norm; None: no clipping
    precision: str = "32"         # 32 | bf16 | fp16 autocast
    channels_last: bool | None = None  # NHWC; None: on the CPU only
    compile: bool = False
    progress: bool = True
    sample_every: int = 5         # raw-vs-EMA sample grids every N epochs (0: none)
    sample_steps: int = 18
    sample_images: int = 64
    sample_seed: int = 42


@dataclass(frozen=True)
class CheckpointSettings:
    every: int = 10               # a snapshot every N epochs (and at the end)
    snapshot_dtype: str = "float32"
    keep_last: int | None = None  # keep only the newest N snapshots...
    keep: tuple[int, ...] = ()    # ...and always these epochs
    resume_every_min: float = 10.0  # last.pt also every N minutes mid-epoch


@dataclass(frozen=True)
class OptimSettings:
    lr: float = 1e-4
    lr_schedule: str = "constant"  # constant | cosine
    warmup_steps: int = 0
    optimizer: dict = field(default_factory=dict)  # built with the parameters (_partial_)


@dataclass(frozen=True)
class TrainSettings:
    config: dict                  # the whole resolved config: config.yaml, checkpoints, resume
    model: dict
    data: dict
    diffusion: dict
    ema: dict | None              # None (or no _target_): trained without EMA
    optim: OptimSettings
    trainer: TrainerSettings
    checkpoint: CheckpointSettings
    logger: object = None         # the logger node (explore.run.loggers)
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    max_jump: int = 5             # sample grids of LIFT follow a DP path: eval.heatmap.max_jump

    @property
    def ema_enabled(self) -> bool:
        return bool(self.ema and self.ema.get("_target_"))

    @classmethod
    def from_config(cls, config: dict) -> TrainSettings:
        """From the resolved config (plain containers); every value checked (`check`)."""
        if str(config.get("resume")).lower() not in ("true", "false"):
            raise ConfigError(f"resume={config.get('resume')!r}: use true or false")
        ckpt = dict(config.get("checkpoint") or {})
        ckpt["keep"] = tuple(int(e) for e in ckpt.get("keep") or ())
        heatmap = (config.get("eval") or {}).get("heatmap") or {}
        settings = cls(
            config=config, model=config["model"], data=config["data"],
            diffusion=config.get("diffusion") or {}, ema=config.get("ema"),
            optim=from_node(OptimSettings, config.get("optim"), "optim"),
            trainer=from_node(TrainerSettings, config.get("trainer"), "trainer"),
            checkpoint=from_node(CheckpointSettings, ckpt, "checkpoint"),
            logger=config.get("logger"), seed=int(config.get("seed", 0)),
            device=config.get("device", "auto"),
            resume=str(config.get("resume")).lower() == "true",
            max_jump=int(heatmap.get("max_jump") or 5))
        settings.check()
        return settings

    def check(self) -> None:
        """Fail before any work on a value that cannot work, naming it."""
        t = self.trainer
        if str(t.precision) not in PRECISIONS:
            raise ConfigError(f"trainer.precision={t.precision!r}: use one of "
                              f"{list(PRECISIONS)}")
        check_optim(self.optim)
        for key in ("epochs", "batch_size", "grad_accum"):
            if int(getattr(t, key)) < 1:
                raise ConfigError(f"trainer.{key}={getattr(t, key)} must be >= 1")
        if t.batch_size % t.grad_accum:
            raise ConfigError(f"trainer.batch_size={t.batch_size} is not divisible by "
                              f"trainer.grad_accum={t.grad_accum}")
        if int(self.checkpoint.every) < 1:
            raise ConfigError(f"checkpoint.every={self.checkpoint.every} must be >= 1")
        if self.model.get("image_size") != self.data.get("image_size"):
            raise ConfigError(f"data.image_size={self.data.get('image_size')} differs from "
                              f"model.image_size={self.model.get('image_size')}")
        for key, low in (("sample_every", 0), ("sample_steps", 1), ("sample_images", 1)):
            if int(getattr(t, key)) < low:
                raise ConfigError(f"trainer.{key}={getattr(t, key)} must be >= {low}")
        diffusion_steps = int(self.diffusion.get("num_steps", 1000))
        if int(t.sample_steps) >= diffusion_steps:
            raise ConfigError(f"trainer.sample_steps={t.sample_steps} must be below the "
                              f"{diffusion_steps} diffusion steps")


def check_optim(optim: OptimSettings) -> None:
    """The optimizer's numbers, named, before torch's own error deep inside its constructor."""
    def number(key: str, value) -> float:
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"optim.{key}={value!r} is not a number") from None
        if not math.isfinite(x):
            raise ConfigError(f"optim.{key}={value} must be finite")
        return x

    if number("lr", optim.lr) <= 0:
        raise ConfigError(f"optim.lr={optim.lr} must be > 0 (the study: 1e-4; the smoke "
                          f"preset: 2e-3)")
    if optim.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"optim.lr_schedule={optim.lr_schedule!r}: use one of "
                          f"{list(LR_SCHEDULES)}")
    if int(optim.warmup_steps or 0) < 0:
        raise ConfigError(f"optim.warmup_steps={optim.warmup_steps} must be >= 0")
    opt = optim.optimizer or {}
    if opt.get("weight_decay") is not None and number("optimizer.weight_decay",
                                                      opt["weight_decay"]) < 0:
        raise ConfigError(f"optim.optimizer.weight_decay={opt['weight_decay']} must be >= 0")
    for i, beta in enumerate(opt.get("betas") or []):
        if not 0 <= number(f"optimizer.betas[{i}]", beta) < 1:
            raise ConfigError(f"optim.optimizer.betas={list(opt['betas'])}: each in [0, 1)")
