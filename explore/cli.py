"""The one Hydra entry-point wrapper of the command-line tools.

    if __name__ == "__main__":
        hydra_entry("train", _run)()        # conf/train.yaml; _run(cfg) does the work

It registers the config resolvers, runs the task, and turns a `UserError` (a bad value, a missing
folder, a broken file: the message says what to do) into that message and exit status 1 instead
of a traceback (in a multirun's job: the message, and the error handed to the launcher).
"""

from __future__ import annotations

import logging
import os
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
            if in_submitit_job():  # a multirun's job: the launcher reports the error at once
                raise
            sys.exit(1)

    return hydra.main(config_path=str(CONF_DIR), config_name=config_name,
                      version_base="1.3")(run)


def in_submitit_job() -> bool:
    """Whether this process is a job that submitit started (a Hydra multirun through the
    local_devices or submitit_slurm launcher). There a `sys.exit` leaves submitit no result
    file, and the launcher waits 15 s for one before it says the job failed; an exception is
    recorded as the job's result and reported when the job ends."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR") or os.environ.get("SUBMITIT_LOCAL_JOB_ID"))
