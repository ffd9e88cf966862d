"""Hydra/OmegaConf glue: where the configs live, resolvers, and composing a config from code."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from explore.core.errors import ConfigError, UserError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # <repo>/conf


def ema_tag(ema) -> str:
    """A short, filename-safe name of an EMA config, for run folder names (a BEMA beside other
    averages: "+bema")."""
    if ema is None or not ema.get("_target_"):
        return "noema"
    if "ema_power" in ema:  # ema=bema: the bias-corrected EMA alone
        return "bema"
    return _averages_tag(ema) + ("+bema" if ema.get("bema") is not None else "")


def _averages_tag(ema) -> str:
    if "sigma_rels" in ema:
        tag = "phema" + "+".join(str(s) for s in ema.sigma_rels)
        return tag + ("-ema" + "+".join(str(d) for d in ema.decays) if ema.get("decays") else "")
    if ema.get("half_lives_kimg"):
        return "emahl" + "+".join(f"{h}k" for h in ema.half_lives_kimg)
    if "decays" in ema:
        return "ema" + "+".join(str(d) for d in ema.decays)
    if ema.get("half_life_kimg"):
        return f"emahl{ema.half_life_kimg}k"
    return f"ema{ema.decay}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("ema_tag"):
        OmegaConf.register_new_resolver("ema_tag", ema_tag)


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose a config from conf/ without running an app (tests, launchers)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    GlobalHydra.instance().clear()
    return cfg


# `_target_`s whose module moved (explore/ became subpackages): configs saved in run folders
# and checkpoints before keep the old names; they build, and resume, as the same classes
MOVED_TARGETS = {"explore.models.": "explore.nets.models.",
                 "explore.data.": "explore.nets.data.",
                 "explore.diffusion.": "explore.nets.diffusion.",
                 "explore.logger_backends.": "explore.run.logger_backends."}


def upgrade_targets(tree):
    """A copy of a plain config tree with moved `_target_`s under their new names."""
    if isinstance(tree, dict):
        out = {k: upgrade_targets(v) for k, v in tree.items()}
        target = out.get("_target_")
        if isinstance(target, str):
            for old, new in MOVED_TARGETS.items():
                if target.startswith(old):
                    out["_target_"] = new + target[len(old):]
        return out
    if isinstance(tree, list):
        return [upgrade_targets(v) for v in tree]
    return tree


def build(node, **kwargs):
    """`hydra.utils.instantiate` of a config node (a dict, or a DictConfig), but our own errors
    (a missing data folder, a bad decay) come out as themselves, not wrapped in Hydra's
    InstantiationException, and Hydra's own (an unknown argument, a bad _target_) as a
    ConfigError naming the config node. A saved node's moved `_target_` builds under its new
    name."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if isinstance(node, dict):
        node = upgrade_targets(node)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise ConfigError(str(e)) from e


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain containers (for checkpoints and config.yaml)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


# at import: every process that composes or resolves a config (a Hydra app, a submitit job
# resolving hydra.sweep.subdir, the study's job functions) imports this module first
register_resolvers()
