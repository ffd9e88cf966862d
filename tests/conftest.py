"""Shared fixtures: configs composed from conf/ and shrunk so a run takes seconds on a CPU."""

from __future__ import annotations

import pytest
import torch

from explore.config import compose

# A tiny but complete training config: two-level UNet on 16x16 shapes, 4 optimizer steps/epoch.
TINY = [
    "experiment=smoke", "device=cpu", "model.hidden_dims=[8,16]", "model.image_size=16",
    "model.attn_min_ch=16", "data.num_images=64", "trainer.batch_size=16",
    "trainer.epochs=2", "trainer.progress=false",
]


@pytest.fixture(autouse=True)
def _one_thread():
    # the CI machine has 2 cores; bitwise comparisons also want a fixed thread count
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_cfg():
    """compose('train', TINY + overrides)"""
    def make(*overrides: str):
        return compose("train", TINY + list(overrides))
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
