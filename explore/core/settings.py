"""Typed settings from plain config nodes: the entry points read the config, turn each node into
a frozen dataclass of the subsystem it configures, and hand that down."""

from __future__ import annotations

from dataclasses import fields

from explore.core.errors import ConfigError


def from_node(cls, node: dict | None, where: str):
    """A settings dataclass from a config node; an unknown key is a ConfigError naming it."""
    node = dict(node or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(node) - known)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]} is not an option of {where} (options: "
                          f"{', '.join(sorted(known))})")
    return cls(**node)
