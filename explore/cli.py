"""The one Hydra entry-point wrapper of the command-line tools.

    if __name__ == "__main__":
        hydra_entry("train", _run)()        # conf/train.yaml; _run(cfg) does the work

It registers the config resolvers, runs the task, and turns a `UserError` (a bad value, a missing
folder, a broken file: the message says what to do) into that message and exit status 1 instead
of a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from omegaconf import DictConfig

from explore.core.config import CONF_DIR, register_resolvers
from explore.core.errors import UserError


def hydra_entry(config_name: str, task: Callable[[DictConfig], object],
                logger: str = "explore") -> Callable[[], None]:
    """`@hydra.main` over conf/<config_name>.yaml around `task`, with the error handling above."""
    import hydra

    register_resolvers()

    def run(cfg: DictConfig) -> None:
        try:
            task(cfg)
        except UserError as err:
            logging.getLogger(logger).error("%s", err)
            sys.exit(1)

    return hydra.main(config_path=str(CONF_DIR), config_name=config_name,
                      version_base="1.3")(run)
