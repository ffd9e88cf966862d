"""Sample grids during training (explore.training.watch): when they are made, what they show, and
that making them changes nothing in the training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import settings

from explore.core.config import compose
from explore.core.errors import ConfigError
from explore.run.folder import RunFolder
from explore.train import train
from explore.training import watch as watch_mod
from explore.training.step import build_training


def panels_of(path):
    """{weights: pixel array of its sample grid} and the header above each, from the PNG's
    stored layout."""
    img = Image.open(path)
    meta = json.loads(img.text["watch"])
    pixels = np.asarray(img.convert("RGB"))
    grids, headers = {}, {}
    for p in meta["panels"]:
        x0, y0, x1, y1 = p["box"]
        grids[p["weights"]] = pixels[y0:y1, x0:x1]
        headers[p["weights"]] = pixels[:y0, x0:x1]
    return meta, grids, headers


def red_pixels(region) -> int:
    r, g, b = (region[..., i].astype(int) for i in range(3))
    return int(((r > 150) & (g < 80) & (b < 80)).sum())


@pytest.mark.parametrize("model", ["baseline", "lift"])
def test_grid_every_n_epochs_raw_and_ema_differ_and_a_young_ema_says_so(trained_run, model):
    run = trained_run(f"model={model}", "ema=multi", "ema.decays=[0.9,0.99]", "trainer.epochs=3",
                      "trainer.sample_every=2")
    found = sorted(p.name for p in RunFolder(run).samples_dir.iterdir())
    assert found == ["epoch_0002.png", "epoch_0003.png"]  # every 2 epochs, and the last
    meta, grids, headers = panels_of(RunFolder(run).samples(3))
    assert meta["epoch"] == 3 and meta["step"] == 12
    assert list(grids) == ["raw", "ema", "ema@0.99"]  # explore.evaluate's weight-set names
    assert grids["raw"].shape == grids["ema"].shape == grids["ema@0.99"].shape
    assert grids["raw"].shape[0] >= 256  # 8x8 images of 16 px, scaled up to stay readable
    assert not np.array_equal(grids["raw"], grids["ema"])
    assert not np.array_equal(grids["ema"], grids["ema@0.99"])
    # share after 12 steps: 0.9 -> 0.72, 0.99 -> 0.11: only the second is "mostly initial
    # weights", in red on its panel
    assert red_pixels(headers["ema@0.99"]) > 20
    assert red_pixels(headers["ema"]) == red_pixels(headers["raw"]) == 0


def test_sampling_leaves_weights_mode_and_random_streams_as_they_were(tiny_cfg, tmp_path):
    cfg = tiny_cfg("model=lift", "ema.decay=0.9")
    training = build_training(settings(cfg), torch.device("cpu"), 8)
    for _ in range(3):  # the EMA moves away from the raw weights
        with torch.no_grad():
            for p in training.model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        training.ema.update()
    training.model.train()
    before = {k: v.clone() for k, v in training.model.state_dict().items()}
    shadow = {k: v.clone() for k, v in training.ema.shadow.items()}
    rng = torch.get_rng_state()
    panels = watch_mod.sample_panels(training, RunFolder(tmp_path), 1, 4, 3, 8, seed=42)
    assert [p.weights for p in panels] == ["raw", "ema"]
    assert training.model.training
    assert torch.equal(torch.get_rng_state(), rng)
    after = training.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(shadow[k], v) for k, v in training.ema.shadow.items())
    # the sampler's own seed: the same weights give the same pictures
    again = watch_mod.sample_panels(training, RunFolder(tmp_path), 1, 4, 3, 8, seed=42)
    assert all(torch.equal(a.images, b.images) for a, b in zip(panels, again))


def test_lift_uses_a_cached_dp_path_of_its_run(tiny_cfg, eval_cfg, run_copy, monkeypatch):
    from explore.evaluate import evaluate

    grid = "trainer.sample_every=1"
    run = run_copy("model=lift", "ema.decay=0.9", "trainer.epochs=1", grid)
    evaluate(eval_cfg(f"run_dir={run}", "eval.weights=[raw]"))  # caches a heatmap of epoch 1
    cfg = tiny_cfg("model=lift", "ema.decay=0.9", "trainer.epochs=2", grid, "resume=true")
    paths = []
    real = watch_mod.sample_lift

    def spy(model, schedule, n, path, **kw):
        paths.append([tuple(p) for p in path])
        return real(model, schedule, n, path, **kw)

    monkeypatch.setattr(watch_mod, "sample_lift", spy)
    train(cfg, run)
    diagonal = [tuple(p) for p in watch_mod.diagonal_path(4)]
    assert len(paths) == 2 and paths[0] != diagonal  # raw: the DP-Total path of its heatmap
    assert paths[1] != diagonal                          # ema: another weight set's heatmap


def test_sampling_options_are_checked(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match="trainer.sample_every=-1"):
        train(tiny_cfg("trainer.sample_every=-1"), tmp_path / "run")
    with pytest.raises(ConfigError, match="trainer.sample_steps=1000"):
        train(tiny_cfg("trainer.sample_steps=1000"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_failing_grid_warns_once_and_training_finishes(tiny_cfg, tmp_path, monkeypatch,
                                                         caplog):
    def broken(*a, **kw):
        raise RuntimeError("out of memory (on purpose)")

    monkeypatch.setattr(watch_mod, "sample_panels", broken)
    run = train(tiny_cfg("trainer.epochs=3", "trainer.sample_every=1"), tmp_path / "run")
    warned = [r for r in caplog.records if "sample grid" in r.getMessage()]
    assert len(warned) == 1 and "out of memory" in warned[0].getMessage()
    assert RunFolder(run).checkpoint(3).is_file()


def test_default_sample_every_at_full_size_and_smoke():
    assert compose("train").trainer.sample_every == 5
    assert compose("train", ["experiment=smoke"]).trainer.sample_every == 3
