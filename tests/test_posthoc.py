"""Power-function EMA (EDM2) and post-hoc reconstruction: the profile maths, the tracked
profile, the reconstruction check against a directly tracked profile, the posthoc app, and
evaluation of the reconstructed weight sets."""

import math
import warnings

import numpy as np
import pytest
import torch
from tiny import rows
from torch import nn

from explore import evaluate as ev
from explore import posthoc as ph
from explore.core.config import compose
from explore.core.errors import ConfigError
from explore.core.files import atomic_write
from explore.ema import (
    EMA,
    SIGMA_REL_MAX,
    SNAPSHOT_FORMAT,
    EMABank,
    PostHocEMA,
    gamma_to_sigma_rel,
    phema_name,
    sigma_rel_to_gamma,
)
from explore.ema import reconstruction as rc
from explore.evaluation import posthoc as stage
from explore.evaluation.weights import reconstructed_sets, weight_sets
from explore.run.checkpoint import load_checkpoint
from explore.run.folder import RunFolder
from explore.train import train

# the check of point 2: reconstructing sigma_rel 0.10 from snapshots of 0.05 and 0.15 taken every
# 20 of 600 steps must give weights whose rms difference to the tracked 0.10 EMA is below this
# fraction of rms(tracked - raw) (measured: 3.7e-5), and a relative profile error below 5e-3
# (measured 1.6e-3); with 6 snapshot times instead of 30 the same check fails (1e-2).
REL_TOL = 1e-3


# -- the maths -------------------------------------------------------------------------------------
def test_sigma_rel_and_gamma():
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)  # EDM2's two profiles
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    for s in (0.01, 0.05, 0.1, 0.2, 0.29):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(s)) == pytest.approx(s, rel=1e-9)
    assert SIGMA_REL_MAX == pytest.approx(0.3003, abs=1e-4)
    for bad in (0.0, 0.31, -0.1):
        with pytest.raises(ValueError, match="sigma_rel"):
            sigma_rel_to_gamma(bad)


def test_profile_inner_product_matches_quadrature():
    tau = np.linspace(0, 900, 900_001)

    def profile(t, g):
        return np.where(tau <= t, (g + 1) * tau**g / t ** (g + 1), 0.0)

    for (ta, ga), (tb, gb) in [((500, 6.94), (900, 16.97)), ((900, 2.0), (300, 0.5)),
                               ((700, 6.94), (700, 6.94))]:
        numeric = np.trapezoid(profile(ta, ga) * profile(tb, gb), tau)
        assert rc.profile_inner(ta, ga, tb, gb) == pytest.approx(numeric, rel=1e-4)


def test_coefficients_pick_a_source_equal_to_the_target():
    steps, gammas = [100, 200, 300, 300], [6.94, 6.94, 6.94, 16.97]
    fit = rc.solve_coefficients(steps, gammas, 300, 16.97)
    assert fit.coefficients == pytest.approx([0, 0, 0, 1], abs=1e-6)
    assert fit.profile_error < 1e-6 and fit.coefficients.sum() == pytest.approx(1)


def test_sigma_rel_for_an_exponential_decay():
    # std of an exponential EMA: sqrt(d) / (1 - d) steps = 999.5 for 0.999; at step 5000: 0.2
    assert rc.sigma_rel_for_decay(0.999, 5000) == 0.2
    with pytest.raises(ConfigError, match="longer than any power profile"):
        rc.sigma_rel_for_decay(0.9999, 5000)


# -- the tracked profile ------------------------------------------------------------------------
@pytest.mark.parametrize("every", [1, 3])
def test_power_ema_weights_are_the_profile_integrals(every):
    """With the weights one-hot per step, the EMA holds its own profile: the raw weights after
    step k get the integral of (g+1) tau^g / T^(g+1) over (k - every, k]."""
    steps, sigma = 210, 0.1
    model = nn.Module()
    model.w = nn.Parameter(torch.zeros(steps))
    ema = PostHocEMA(model, sigma_rels=[sigma], snapshot_every=None, update_every=every)
    for k in range(steps):
        with torch.no_grad():
            model.w.zero_()
            model.w[k] = 1.0
        ema.update()
    g = sigma_rel_to_gamma(sigma)
    k = np.arange(1, steps + 1, dtype=np.float64)
    want = np.where(k % every == 0, (k ** (g + 1) - np.maximum(k - every, 0) ** (g + 1))
                    / steps ** (g + 1), 0.0)
    got = ema.track(phema_name(sigma)).shadow["w"].double().numpy()
    assert np.abs(got - want).max() < 1e-6 and got.sum() == pytest.approx(1, abs=1e-5)
    assert ema.track(phema_name(sigma)).share_post_init == 1.0  # beta_1 = 0: no initial weights


def random_walk(tmp_path, steps, every, sigma_rels=(0.05, 0.10, 0.15)):
    torch.manual_seed(0)
    model = nn.Linear(400, 5)
    ema = PostHocEMA(model, sigma_rels=sigma_rels, snapshot_every=every)
    drift = [0.01 * torch.randn_like(p) for p in model.parameters()]
    for _ in range(steps):
        with torch.no_grad():
            for p, d in zip(model.parameters(), drift):
                p.add_(d + 0.05 * torch.randn_like(p))
        ema.update()
        if ema.snapshot_due():  # what the training loop does
            atomic_write(RunFolder(tmp_path).snapshot(ema.step),
                         lambda f: torch.save(ema.snapshot(), f))
    return model, ema


def test_reconstruction_of_a_tracked_profile_matches_it(tmp_path):
    """Point 2's check: 0.10 rebuilt from the 0.05 and 0.15 snapshots ~ the tracked 0.10."""
    model, ema = random_walk(tmp_path, 600, 20)
    results = {}
    for label, every in (("dense", 1), ("sparse", 5)):  # 30 vs 6 snapshot times
        sources = stage.find_sources(tmp_path, [0.05, 0.15])[every - 1::every]
        target = rc.Target(phema_name(0.1), 0.1, sigma_rel_to_gamma(0.1))
        weights = rc.reconstruct([target], sources, 600,
                                   stage.stored_power_states)[target.name]
        tracked = ema.track("phema@0.1").shadow
        raw = {k: v.detach() for k, v in model.state_dict().items()}
        results[label] = (rc.compare(weights, tracked, raw), target.fit.profile_error)
    check, profile_error = results["dense"]
    assert len(stage.find_sources(tmp_path, [0.05, 0.15])) == 60
    assert check["rel_rms_diff"] < REL_TOL and profile_error < 5e-3
    assert check["max_abs_diff"] < 1e-3
    assert results["sparse"][0]["rel_rms_diff"] > REL_TOL  # the tolerance can fail


# -- training, the app and evaluation ------------------------------------------------------------
PHEMA = ["ema=posthoc", "ema.sigma_rels=[0.05,0.1]", "ema.snapshot_every=2"]


def test_snapshots_are_written_by_the_training_loop_not_by_update(trained_run, tmp_path,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = nn.Linear(3, 2)
    ema = PostHocEMA(model, sigma_rels=[0.05, 0.1], snapshot_every="auto")
    ema.plan(96)  # auto: 96 // 32 = every 3 steps
    due = []
    for _ in range(7):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update()
        due.append(ema.snapshot_due())
    assert due == [False, False, True, False, False, True, False]
    assert list(tmp_path.iterdir()) == []  # updating alone writes nothing, anywhere
    snap = ema.snapshot()
    assert list(snap) == ["format", "step", "emas"] and snap["format"] == SNAPSHOT_FORMAT
    assert snap["step"] == 7 and list(snap["emas"]) == ["phema@0.05", "phema@0.1"]
    assert torch.equal(snap["emas"]["phema@0.1"]["shadow"]["weight"],
                       ema.track("phema@0.1").shadow["weight"])
    assert not PostHocEMA(model, sigma_rels=[0.1], snapshot_every=None).snapshot_due()
    for other in (EMABank(model, decays=[0.9, 0.5]), EMA(model, decay=0.9)):
        other.plan(96)
        other.update()
        assert not other.snapshot_due()

    # the training loop writes them: snapshot_every=auto, 8 steps -> every step, 1..8
    run = trained_run("ema=posthoc", "ema.sigma_rels=[0.05,0.1]")
    names = sorted(p.name for p in RunFolder(run).phema_dir.iterdir())
    assert names == [RunFolder(run).snapshot(s).name for s in range(1, 9)]
    for epoch, step in ((1, 4), (2, 8)):  # the same states as the checkpoints at those steps
        snap = torch.load(RunFolder(run).snapshot(step), weights_only=True)
        saved = load_checkpoint(run / "checkpoints" / f"epoch_{epoch:04d}.pt")["emas"]
        assert list(snap) == ["format", "step", "emas"] and snap["format"] == SNAPSHOT_FORMAT
        assert snap["step"] == step and list(snap["emas"]) == list(saved)
        for name, state in saved.items():
            assert snap["emas"][name]["step"] == step
            assert snap["emas"][name]["decay_product"] == state["decay_product"]
            for k, v in state["shadow"].items():
                assert torch.equal(snap["emas"][name]["shadow"][k], v), (name, k)


def test_posthoc_resume_is_bitwise_identical(tiny_cfg, trained_run, run_copy):
    straight = trained_run(*PHEMA)
    half = run_copy(*PHEMA, "trainer.epochs=1")
    resumed = train(tiny_cfg(*PHEMA, "resume=true"), half)
    a = load_checkpoint(straight / "checkpoints" / "epoch_0002.pt")
    b = load_checkpoint(resumed / "checkpoints" / "epoch_0002.pt")
    assert set(a["emas"]) == {"phema@0.05", "phema@0.1"} and a["ema_state"]["kind"] == "phema"
    for name, sa in a["emas"].items():
        assert sa["step"] == b["emas"][name]["step"] == 8
        for k, v in sa["shadow"].items():
            assert torch.equal(v, b["emas"][name]["shadow"][k]), (name, k)
    snaps = sorted(p.name for p in (straight / "phema").glob("snapshot_*.pt"))
    assert snaps == [f"snapshot_{s:09d}.pt" for s in (2, 4, 6, 8)]
    assert snaps == sorted(p.name for p in (resumed / "phema").glob("snapshot_*.pt"))


@pytest.fixture
def phema_run(run_copy):
    """A Baseline run with power-function EMAs: the test's own copy, to reconstruct into."""
    return run_copy("model=baseline", *PHEMA, name="phema")


def test_posthoc_app_writes_weight_sets_that_evaluate_scores(phema_run, tmp_path):
    run = phema_run
    out = ph.posthoc(compose("posthoc", [f"run_dir={run}", "sigma_rel=[0.03,0.1]",
                                         "decay=[0.5]", "epochs=all", "sources=[0.05]"]))
    names = sorted(p.name for p in out)
    # decay 0.5 is sigma_rel sqrt(.5)/(.5 * 8) = 0.177 at step 8 (epoch 2); at step 4 it would
    # be 0.354, longer than any power profile: skipped at epoch 1 with a warning
    assert names == ["epoch_0001_phema@0.03.pt", "epoch_0001_phema@0.1.pt",
                     "epoch_0002_phema@0.03.pt", "epoch_0002_phema@0.1.pt",
                     "epoch_0002_phema@0.177.pt"]
    rec = torch.load(run / "phema" / "reconstructed" / "epoch_0002_phema@0.1.pt",
                     weights_only=True)
    assert rec["step"] == 8 and rec["sources"][-1] == [8, 0.05]
    assert "check" in rec and rec["check"]["max_abs_diff"] < 1  # vs the tracked 0.1 (coarse)
    assert sum(rec["coefficients"]) == pytest.approx(1)
    # existing reconstructions are kept unless force=true (and one value needs no brackets)
    assert ph.posthoc(compose("posthoc", [f"run_dir={run}", "sigma_rel=0.03", "epochs=2"])) == []

    state = load_checkpoint(run / "checkpoints" / "epoch_0002.pt")
    tracked = weight_sets(state, steps_per_epoch=4)
    assert list(tracked) == ["raw", "phema@0.05", "phema@0.1"]
    sets = reconstructed_sets(run, 2, have=tracked)
    assert set(sets) == {"phema@0.03", "phema@0.177"}  # the tracked 0.1 is not replaced
    assert sets["phema@0.03"].share == 1.0
    assert sets["phema@0.03"].lag_epochs(4) == pytest.approx(0.03 * 8 / 4)

    cfg = compose("evaluate", [f"run_dir={run}", "device=cpu", "progress=false",
                               "eval.num_images=16", "eval.num_steps=2", "eval.batch_size=16",
                               "eval.fid.extractor=randconv-256", "eval.grid=false",
                               f"eval.fid.cache_root={tmp_path / 'fid'}", "eval.epochs=[2]"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="eval.num_images")
        got = {r["weights"]: r for r in rows(ev.evaluate(cfg))}
    assert set(got) == {"raw", "phema@0.05", "phema@0.1", "phema@0.03", "phema@0.177"}
    for name in ("phema@0.1", "phema@0.03"):
        assert got[name]["ema_share"] == "1.0" and got[name]["ema_share_low"] == "False"
        assert math.isfinite(float(got[name]["fid"]))
    assert float(got["phema@0.1"]["lag_epochs"]) == pytest.approx(0.1 * 8 / 4)


def test_posthoc_errors(phema_run, trained_run):
    with pytest.raises(ConfigError, match="nothing to reconstruct"):
        ph.posthoc(compose("posthoc", [f"run_dir={phema_run}"]))
    with pytest.raises(ConfigError, match="sigma_rel=0.5"):
        ph.posthoc(compose("posthoc", [f"run_dir={phema_run}", "sigma_rel=[0.5]"]))
    with pytest.raises(ConfigError, match="epochs=\\[7\\]"):
        ph.posthoc(compose("posthoc", [f"run_dir={phema_run}", "sigma_rel=[0.1]", "epochs=[7]"]))
    with pytest.raises(ConfigError, match="not tracked"):
        ph.posthoc(compose("posthoc", [f"run_dir={phema_run}", "sigma_rel=[0.1]",
                                       "sources=[0.2]"]))
    plain = trained_run("trainer.epochs=1")
    with pytest.raises(ConfigError, match="ema=posthoc"):
        ph.posthoc(compose("posthoc", [f"run_dir={plain}", "sigma_rel=[0.1]"]))
