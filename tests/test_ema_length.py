"""One length axis for every average: sigma_rel and half-life (explore/ema/length.py), and the
EMA length in images (ema.half_life_kimg)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny import settings
from torch import nn

from explore.core.config import build
from explore.ema import EMA, EMABank
from explore.ema.decay import decay_for_half_life, half_life_kimg_for_decay
from explore.ema.length import RAW, exponential_length, power_length
from explore.ema.state import track_info


class OneHot(nn.Module):
    """A 'model' whose weights at step k are the indicator of k: an EMA of it *is* its
    averaging profile (entry j = the weight it gives the weights of step j)."""

    def __init__(self, steps: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(steps + 1, dtype=torch.float64))
        with torch.no_grad():
            self.w[0] = 1.0

    def set_step(self, k: int) -> None:
        with torch.no_grad():
            self.w.zero_()
            self.w[k] = 1.0


def measured_profile(ema_cls_kwargs: dict, steps: int) -> np.ndarray:
    model = OneHot(steps)
    ema = EMA(model, **ema_cls_kwargs)
    for k in range(1, steps + 1):
        model.set_step(k)
        ema.update()
    return ema.shadow["w"].double().numpy(), ema


def moments_over_time(profile: np.ndarray) -> tuple[float, float]:
    t = np.arange(len(profile), dtype=np.float64)
    w = profile / profile.sum()
    mean = float((t * w).sum())
    return mean, float(((t - mean) ** 2 * w).sum())


@pytest.mark.parametrize("kwargs", [
    dict(decay=0.99), dict(decay=0.9), dict(decay=0.999),
    dict(decay=0.99, update_every=3), dict(decay=0.99, start_step=40),
    dict(decay=0.99, bias_correction=True), dict(decay=0.995, warmup="power"),
    dict(decay=0.99, warmup="cap", update_every=2),
])
def test_sigma_rel_of_an_exponential_ema_is_its_measured_profiles(kwargs):
    """The closed form (and, for warm-up rules, the integrated decay sequence) against the
    profile the harness's own EMA class builds, read off one-hot weights."""
    steps = 300
    profile, ema = measured_profile(kwargs, steps)
    assert profile.sum() == pytest.approx(1.0, abs=1e-5)  # the shadow is float32
    _, var = moments_over_time(profile)
    info = track_info(ema.state_dict())
    length = info.length(steps)
    assert length.sigma_rel == pytest.approx(math.sqrt(var) / steps, rel=1e-4)
    # half-life: the age below which half the weight lies (to the update interval)
    by_age = profile[::-1]
    half = np.searchsorted(np.cumsum(by_age), 0.5)
    assert abs(length.half_life_steps - half) <= kwargs.get("update_every", 1) + 1


def test_long_runs_approach_the_geometric_std_and_early_ones_the_initial_weights():
    d = 0.9999
    late = exponential_length(d, 10_000_000)
    assert late.sigma_rel * 10_000_000 == pytest.approx(math.sqrt(d) / (1 - d), rel=1e-3)
    assert late.half_life_steps == pytest.approx(math.log(0.5) / math.log(d))
    early = exponential_length(d, 100)  # 99% of the weight still on the initial weights
    assert early.half_life_steps == 100 and early.sigma_rel < 0.1
    # sigma_rel of a fixed decay shrinks as training goes on
    assert exponential_length(d, 20_000).sigma_rel > exponential_length(d, 200_000).sigma_rel
    assert RAW.sigma_rel == 0 and RAW.half_life_kimg(64) == 0


def test_power_profile_length_is_its_definition():
    from explore.ema import sigma_rel_to_gamma

    g = sigma_rel_to_gamma(0.1)
    length = power_length(0.1, g, 1000)
    t = np.linspace(0, 1000, 200_001)
    p = (g + 1) * t ** g / 1000 ** (g + 1)
    # half of the profile's mass lies on the newest half_life_steps
    mass_newest = np.trapezoid(p[t >= 1000 - length.half_life_steps],
                               t[t >= 1000 - length.half_life_steps])
    assert mass_newest == pytest.approx(0.5, abs=1e-3)
    assert length.sigma_rel == 0.1


def test_half_life_and_decay_round_trip():
    for h, b in ((500, 64), (10, 16), (443.6, 64)):
        d = decay_for_half_life(h, b)
        assert half_life_kimg_for_decay(d, b) == pytest.approx(h, rel=1e-9)
    assert half_life_kimg_for_decay(0.9999, 64) == pytest.approx(443.6, abs=0.05)
    with pytest.raises(ValueError, match="half_life_kimg"):
        decay_for_half_life(0, 64)


def test_a_half_life_keeps_the_emas_length_in_images_when_the_batch_changes(tiny_cfg):
    """Busbridge et al.'s scaling rule: batch x kappa -> decay^kappa; after the same number of
    images both EMAs leave the same weight on the initial weights and have the same length."""
    small = build(tiny_cfg("ema.half_life_kimg=0.2", "trainer.batch_size=16").ema,
                  model=OneHot(1))
    large = build(tiny_cfg("ema.half_life_kimg=0.2", "trainer.batch_size=32").ema,
                  model=OneHot(1))
    assert large.decay == pytest.approx(small.decay ** 2, rel=1e-12)
    images = 3200
    assert small.decay ** (images // 16) == pytest.approx(large.decay ** (images // 32))
    a = exponential_length(small.decay, images // 16).half_life_kimg(16)
    b = exponential_length(large.decay, images // 32).half_life_kimg(32)
    assert a == pytest.approx(b, rel=1e-9) and a == pytest.approx(0.2, rel=1e-9)
    bank = build(tiny_cfg("ema=multi", "ema.half_lives_kimg=[0.2,1]", "trainer.batch_size=32")
                 .ema, model=OneHot(1))
    assert isinstance(bank, EMABank) and bank.decays[0] == pytest.approx(large.decay)


def test_run_json_and_the_log_state_decay_and_half_life(tiny_cfg, tmp_path, caplog):
    import json

    from explore.train import train

    caplog.set_level("INFO", logger="explore.train")
    run = train(tiny_cfg("ema.half_life_kimg=0.1", "trainer.epochs=1"), tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    d = decay_for_half_life(0.1, 16)
    assert info["ema_decay"] == pytest.approx(d) and info["ema_half_lives_kimg"] == [0.1]
    assert f"decay {d:.10g} per step = half-life 0.1 kimg (6 steps of 16 images" in caplog.text


def test_every_fid_row_has_its_length(run_copy, eval_cfg):
    import csv

    from explore import evaluate as ev

    run = run_copy("model=baseline", "ema=multi", "ema.decays=[0.9,0.5]")
    out = ev.evaluate(eval_cfg(f"run_dir={run}", "eval.epochs=[2]"))
    with open(out) as f:
        rows = {r["weights"]: r for r in csv.DictReader(f)}
    assert float(rows["raw"]["sigma_rel"]) == 0 and float(rows["raw"]["half_life_kimg"]) == 0
    for name, d in (("ema", 0.9), ("ema@0.5", 0.5)):
        want = exponential_length(d, 8)
        assert float(rows[name]["sigma_rel"]) == pytest.approx(want.sigma_rel, abs=1e-5)
        assert float(rows[name]["half_life_kimg"]) == pytest.approx(
            want.half_life_steps * 16 / 1000, abs=1e-4)
    assert float(rows["ema"]["sigma_rel"]) > float(rows["ema@0.5"]["sigma_rel"]) > 0


# -- held-out loss ----------------------------------------------------------------------------
@pytest.mark.slow
def test_held_out_loss_is_fixed_and_higher_on_images_never_trained_on(tiny_cfg, tmp_path):
    """A model overfitted to 8 images: its loss on the fixed triples is higher on held-out
    images than on training images; two calls give the same numbers."""
    import csv

    from explore.train import train
    from explore.training.heldout import HeldOutLoss

    cfg = tiny_cfg("model=baseline", "model.hidden_dims=[16,32]", "data.num_images=8",
                   "data.holdout_num=8", "trainer.batch_size=8", "trainer.epochs=150",
                   "optim.lr=4e-3", "ema.decay=0.9", "checkpoint.every=150")
    run = train(cfg, tmp_path / "run")
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    for prefix in ("", "ema_"):
        train_loss = float(last[f"{prefix}loss_train_fixed"])
        held = float(last[f"{prefix}loss_holdout"])
        assert held > 1.3 * train_loss, (prefix, held, train_loss)  # measured: 1.39, 1.49
        assert float(last[f"{prefix}loss_gap"]) == pytest.approx(held - train_loss)
    # early on, before it memorised them, the two are close
    assert float(rows[0]["loss_gap"]) < float(last["loss_gap"])

    from explore.core.config import build
    from explore.training.step import build_training

    data = build(cfg.data)
    training = build_training(settings(cfg), torch.device("cpu"), 8)
    held = HeldOutLoss.of(data, training)
    assert held.metrics() == held.metrics()  # fixed triples: the same numbers twice
    assert HeldOutLoss.of(build(tiny_cfg().data), training) is None  # off without held-out


def test_folder_holdout_sets_images_aside_and_says_so(tmp_path, caplog):
    from PIL import Image

    from explore.nets.data import folder

    for i in range(10):
        Image.new("RGB", (20, 20), (i * 20, 0, 0)).save(tmp_path / f"{i}.png")
    caplog.set_level("WARNING")
    data = folder(str(tmp_path), image_size=16, holdout_num=3, progress=False)
    assert len(data) == 7 and len(data.holdout) == 3 and data.name.endswith("-holdout3")
    assert "3 images set aside as held-out, training on the other 7" in caplog.text
    seen = {int(x[0, 0, 0]) for x in torch.cat([data.images, data.holdout])}
    assert len(seen) == 10  # disjoint, none lost


# -- memorisation -------------------------------------------------------------------------------
def test_memorization_rate_is_one_for_copies_and_zero_for_fresh_samples():
    from explore.evaluation.memorization import nearest_two, pair_grid, pixels
    from explore.nets.data import shapes

    train = shapes(image_size=16, num_images=256, seed=0).images
    noisy = (train[:64].int() + torch.randint(-2, 3, (64, 3, 16, 16),
                                              generator=torch.Generator().manual_seed(1)))
    copies = noisy.clamp(0, 255).to(torch.uint8)  # training images + tiny noise
    fresh = shapes(image_size=16, num_images=64, seed=7).images  # another seed: new images
    near = nearest_two(pixels(copies), pixels(train))
    assert near.rate() >= 0.95
    assert torch.equal(near.index, torch.arange(64))  # each found its own original
    assert nearest_two(pixels(fresh), pixels(train)).rate() <= 0.05
    grid = pair_grid(copies, train, near, k=8)
    assert grid.dtype == torch.uint8 and grid.shape[0] == 3


def test_memorization_is_a_metric_of_evaluation(run_copy, eval_cfg):
    """eval.metrics=[...,memorization]: a column per row (feature space, and pixels when asked),
    the closest pairs as a grid (the rate itself: the test above)."""
    import csv

    from explore import evaluate as ev

    run = run_copy("model=baseline", "trainer.epochs=1")
    out = ev.evaluate(eval_cfg(f"run_dir={run}", "eval.metrics=[fid,memorization]",
                               "eval.memorization_pixels=true", "eval.weights=[raw]"))
    with open(out) as f:
        (row,) = list(csv.DictReader(f))
    assert 0 <= float(row["memorization"]) <= 0.2  # one epoch: nothing is copied yet
    assert row["memorization_px"] != ""
    assert (run / "eval" / "grids" / "epoch_0001_raw_ddim_s42_copies.png").is_file()
