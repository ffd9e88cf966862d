"""The settings of one evaluation and of one post-hoc reconstruction, as typed values: what
`explore.evaluate` and `explore.posthoc` read from their configs (conf/evaluate.yaml with
conf/eval/default.yaml; conf/posthoc.yaml) and hand down. Nothing below the entry points reads
the config; `model` and `data` (for a lone checkpoint) travel as plain dicts with their
`_target_`.

    settings = EvalSettings.from_config(plain_config)    # checks every value, naming the bad one

Each field's default is the reference setting; conf/eval/default.yaml holds the same values
with their costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from explore.core.errors import ConfigError
from explore.core.settings import from_node
from explore.evaluation.metrics import check_metrics
from explore.nets.sampling import check_final_step

DEFAULT_SEED = 42  # eval.seeds' default: what rows made before there were seeds used


@dataclass(frozen=True)
class HeatmapSettings:
    grid_size: int = 30
    num_probes: int = 4           # Hutchinson probes K
    num_images: int = 16
    max_jump: int = 5
    cells_per_forward: int | None = None


@dataclass(frozen=True)
class FidSettings:
    extractor: str = "auto"       # auto | inception-v3-compat | randconv-256
    weights_path: str | None = None
    cache_root: str | None = "outputs/cache/fid"
    batch_size: int = 64


@dataclass(frozen=True)
class EvalOptions:
    """The `eval` node: what is measured and how."""

    epochs: tuple[int, ...] | None = None     # None: every checkpoint
    weights: tuple[str, ...] | None = None    # None: raw and every average
    paths: tuple[str, ...] = ("dp_total",)
    num_images: int | None = None             # None: the training set size
    num_steps: int = 18
    final_step: str = "study"
    seeds: tuple[int, ...] = (DEFAULT_SEED,)
    subset_seed: int = 42
    metrics: tuple[str, ...] = ("fid", "kid")
    memorization_pixels: bool = False
    bootstrap: int = 200
    bootstrap_seed: int = 0
    keep_features: bool = False
    batch_size: int = 64
    force: bool = False
    grid: bool = True
    ema_share_threshold: float = 0.5
    fid: FidSettings = field(default_factory=FidSettings)
    heatmap: HeatmapSettings = field(default_factory=HeatmapSettings)

    @classmethod
    def from_node(cls, node: dict) -> EvalOptions:
        node = dict(node or {})
        node["fid"] = from_node(FidSettings, node.get("fid"), "eval.fid")
        node["heatmap"] = from_node(HeatmapSettings, node.get("heatmap"), "eval.heatmap")
        node["seeds"] = sample_seeds(node.get("seeds"))
        for key in ("epochs", "weights"):
            if node.get(key) is not None:
                node[key] = tuple(node[key])
        for key in ("paths", "metrics"):
            if node.get(key) is not None:
                node[key] = tuple(node[key])
        options = from_node(cls, node, "eval")
        options.check()
        return options

    def check(self) -> None:
        if self.num_images is not None and int(self.num_images) < 2:
            raise ConfigError(f"eval.num_images={self.num_images} must be at least 2")
        if not self.metrics:
            raise ConfigError("eval.metrics is empty: name at least one of fid, kid, prc, "
                              "memorization")
        try:
            check_metrics(list(self.metrics))
        except ValueError as err:
            raise ConfigError(f"eval.metrics: {err}") from None
        if int(self.bootstrap) < 0:
            raise ConfigError(f"eval.bootstrap={self.bootstrap} must be >= 0 (0: no bootstrap)")
        if int(self.num_steps) < 1:
            raise ConfigError(f"eval.num_steps={self.num_steps} must be >= 1")
        if int(self.batch_size) < 1:
            raise ConfigError(f"eval.batch_size={self.batch_size} must be >= 1")
        try:
            check_final_step(str(self.final_step))
        except ValueError as err:
            raise ConfigError(f"eval.{err}") from None


def sample_seeds(seeds) -> tuple[int, ...]:
    """eval.seeds as a tuple of distinct integers >= 0 (one integer is a list of one)."""
    seeds = [DEFAULT_SEED] if seeds is None else ([seeds] if isinstance(seeds, int)
                                                  else list(seeds))
    try:
        out = tuple(dict.fromkeys(int(s) for s in seeds))
    except (TypeError, ValueError):
        raise ConfigError(f"eval.seeds={seeds}: a list of integers, e.g. [0,1,2]") from None
    if not out or any(s < 0 for s in out):
        raise ConfigError(f"eval.seeds={seeds}: one or more integers >= 0, e.g. [0,1,2]")
    return out


@dataclass(frozen=True)
class EvalSettings:
    eval: EvalOptions
    run_dir: str | None = None        # a training run folder...
    checkpoint: str | None = None     # ...or one checkpoint file
    out_dir: str | None = None        # with checkpoint=: where eval/ goes
    model: dict | None = None         # a lone checkpoint without a stored config: its model
    data: dict | None = None          # ...and its training images
    device: str = "auto"
    trust_checkpoint: bool = False
    progress: bool = True

    @classmethod
    def from_config(cls, config: dict) -> EvalSettings:
        # `checkpoint=<file>` here; an experiment preset (experiment=smoke) brings training's
        # `checkpoint:` settings node under the same key, which is no file
        lone = config.get("checkpoint")
        lone = None if isinstance(lone, dict) else lone
        if bool(config.get("run_dir")) == bool(lone):
            raise ConfigError("give exactly one of run_dir=<run folder> or checkpoint=<file>")
        model, data = config.get("model"), config.get("data")
        return cls(eval=EvalOptions.from_node(config.get("eval")),
                   run_dir=config.get("run_dir") or None, checkpoint=lone,
                   out_dir=config.get("out_dir") or None,
                   model=model if model and model.get("_target_") else None,
                   data=data if data and data.get("_target_") else None,
                   device=config.get("device", "auto"),
                   trust_checkpoint=bool(config.get("trust_checkpoint")),
                   progress=bool(config.get("progress", True)))


@dataclass(frozen=True)
class PosthocSettings:
    run_dir: str | None = None
    sigma_rel: tuple[float, ...] = ()   # post-hoc lengths to reconstruct
    decay: tuple[float, ...] = ()       # or exponential decays, matched by std
    epochs: object = None               # None: the final checkpoint; "all"; or a list
    sources: tuple[float, ...] | None = None  # tracked sigma_rels to build from (None: all)
    force: bool = False

    @classmethod
    def from_config(cls, config: dict) -> PosthocSettings:
        def as_tuple(value):
            if value is None:
                return ()
            return tuple(value) if isinstance(value, list | tuple) else (value,)

        epochs = config.get("epochs")
        if epochs is not None and str(epochs) != "all":
            epochs = tuple(int(e) for e in as_tuple(epochs))
        sources = config.get("sources")
        return cls(run_dir=config.get("run_dir") or None,
                   sigma_rel=as_tuple(config.get("sigma_rel")),
                   decay=as_tuple(config.get("decay")), epochs=epochs,
                   sources=as_tuple(sources) if sources is not None else None,
                   force=bool(config.get("force")))
