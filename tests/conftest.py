"""Shared fixtures: configs composed from conf/ and shrunk so a run takes seconds on a CPU."""

from __future__ import annotations

import pytest
import torch
from tiny import TINY_EVAL, TINY_TRAIN

from explore.core.config import compose


@pytest.fixture(autouse=True)
def _one_thread():
    # the CI machine has 2 cores; bitwise comparisons also want a fixed thread count
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_cfg():
    """compose('train', TINY_TRAIN + overrides)"""
    def make(*overrides: str):
        return compose("train", TINY_TRAIN + list(overrides))
    return make


@pytest.fixture
def eval_cfg(tmp_path):
    """compose('evaluate', TINY_EVAL + overrides), with its own FID statistics cache"""
    def make(*overrides: str):
        return compose("evaluate", TINY_EVAL + [f"eval.fid.cache_root={tmp_path / 'fidcache'}"]
                       + list(overrides))
    return make


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running one-node SLURM cluster (partition `debug`); SLURM_CONF points at it while the
    tests use it. Skipped where SLURM is not installed (.ci/run installs it)."""
    import os

    from slurm_cluster import Cluster, missing

    why = missing()
    if why:
        pytest.skip(why)
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    old = os.environ.get("SLURM_CONF")
    cluster.start()
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    cluster.stop()
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
