import warnings

import pytest
import torch
from tiny import TINY_TRAIN, rows

from explore import evaluate as ev
from explore.core.config import build, compose
from explore.core.errors import ConfigError
from explore.evaluation import loop as evloop
from explore.evaluation.weights import WeightsError
from explore.nets.models import LiftUNet
from explore.training.step import seed_everything

# the tiny evaluations score fewer images than FID needs to be meaningful, on purpose
pytestmark = pytest.mark.filterwarnings("ignore:eval.num_images")


@pytest.fixture
def lift_run(run_copy):
    """The tiny LIFT run (EMA 0.9, 2 epochs), the test's own copy to evaluate into."""
    return run_copy("model=lift", "ema.decay=0.9", name="lift")


def test_lift_run_rows_grids_heatmaps(lift_run, eval_cfg):
    out = ev.evaluate(eval_cfg(f"run_dir={lift_run}"))
    got = rows(out)
    assert [(r["epoch"], r["weights"], r["path"]) for r in got] == [
        ("1", "ema", "dp_total"), ("1", "raw", "dp_total"),
        ("2", "ema", "dp_total"), ("2", "raw", "dp_total")]
    r = got[-1]
    assert r["model"] == "lift" and r["extractor"] == "randconv-256" and r["num_images"] == "24"
    assert r["step"] == "8" and r["ema_share"] == ""
    # one sampling seed (the default 42), 24 of the 64 training images drawn with subset seed 42
    assert (r["sample_seed"], r["subset_seed"], r["num_real"]) == ("42", "42", "24")
    assert float(r["kid"]) > 0 and float(r["kid_std"]) == 0  # one subset: the whole set
    assert r["precision"] == r["recall"] == r["fid_boot"] == ""  # not asked for
    fids = {(x["epoch"], x["weights"]): float(x["fid"]) for x in got}
    assert all(0 < f < 1e3 for f in fids.values())  # finite, and these models are far from data
    # raw and EMA weights of one checkpoint are different networks: different FIDs
    assert fids[("2", "raw")] != fids[("2", "ema")]
    ema = got[-2]
    assert float(ema["ema_share"]) == pytest.approx(1 - 0.9**8, abs=1e-4)
    assert ema["ema_share_low"] == "False" and got[0]["ema_share_low"] == "True"  # 1 - .9^4 < .5
    assert (lift_run / "eval" / "grids" / "epoch_0002_ema_dp_total_s42.png").stat().st_size > 0
    heatmaps = sorted(p.name for p in (lift_run / "eval" / "heatmaps").iterdir())
    assert "epoch_0002_raw_study_g4_k1_n2_s42.npz" in heatmaps
    assert "epoch_0002_raw_study_g4_k1_n2_s42.png" in heatmaps


def test_skip_force_and_resume(lift_run, eval_cfg, monkeypatch, tmp_path):
    run = lift_run
    cfg = eval_cfg(f"run_dir={run}", "eval.paths=[diagonal,dp_64]", "eval.epochs=[2]")
    calls = {"n": 0}
    real_measure = evloop.metriclib.measure

    def dying_measure(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed in the middle of the third row
        return real_measure(*a, **kw)

    monkeypatch.setattr(evloop.metriclib, "measure", dying_measure)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(cfg)
    done = [(r["weights"], r["path"]) for r in rows(run / "eval" / "fid.csv")
            if r["epoch"] == "2" and r["path"] in ("diagonal", "dp_64")]
    assert len(done) == 2  # the two finished rows survived
    # (the raw weight set's rows came first: its heatmap was made before the kill)
    heatmap = run / "eval" / "heatmaps" / "epoch_0002_raw_study_g4_k1_n2_s42.npz"
    before = heatmap.stat().st_mtime_ns
    calls["n"] = -100
    ev.evaluate(cfg)  # resumes: only the missing rows
    assert calls["n"] == -100 + 2
    assert heatmap.stat().st_mtime_ns == before  # cached heatmap reused
    ev.evaluate(cfg)
    assert calls["n"] == -100 + 2  # nothing left to do
    ev.evaluate(eval_cfg(f"run_dir={run}", "eval.paths=[diagonal]", "eval.epochs=[2]",
                         "eval.force=true", "eval.weights=[raw]"))
    assert calls["n"] == -100 + 3
    keys = [(r["epoch"], r["weights"], r["path"]) for r in rows(run / "eval" / "fid.csv")]
    assert len(keys) == len(set(keys))  # force replaced the row, did not duplicate it


def test_original_study_checkpoint_evaluates_without_conversion(tmp_path, eval_cfg):
    torch.manual_seed(0)
    model = LiftUNet([8, 16], 16, 16)
    shadow = {n: p.detach() + 0.01 for n, p in model.named_parameters()}  # their EMA layout
    path = tmp_path / "old_runs" / "lift_ema_400ep.pth"
    path.parent.mkdir()
    torch.save({"model_state": model.state_dict(), "ema_state": {"decay": 0.9999,
                                                                 "shadow": shadow},
                "optimizer_state": {}, "hidden_dims": [8, 16], "losses": [1.0, 0.5],
                "epochs": 400, "ema_decay": 0.9999}, path)
    out_dir = tmp_path / "scored"
    out = ev.evaluate(eval_cfg(f"checkpoint={path}", "model=lift", "model.image_size=16",
                               "model.attn_min_ch=16", "data=shapes", "data.num_images=64",
                               f"out_dir={out_dir}", "eval.paths=[diagonal]"))
    got = rows(out)
    assert [(r["epoch"], r["weights"]) for r in got] == [("400", "ema"), ("400", "raw")]
    # share estimated from 400 epochs x (64 images // 64) steps
    assert float(got[0]["ema_share"]) == pytest.approx(1 - 0.9999**400, abs=1e-4)
    assert (out_dir / "run.json").is_file()  # analysis can read it as a run
    # the original trained with its clipped schedule: scored with it, and the row says so
    assert {(r["schedule"], r["final_step"]) for r in got} == {("study", "study")}


def test_clear_errors(tmp_path, lift_run, eval_cfg, run_copy):
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ConfigError, match="no checkpoints"):
        ev.evaluate(eval_cfg(f"run_dir={tmp_path / 'empty_run'}"))
    with pytest.raises(ConfigError, match="exactly one"):
        ev.evaluate(eval_cfg())
    with pytest.raises(ConfigError, match="eval.epochs"):
        ev.evaluate(eval_cfg(f"run_dir={lift_run}", "eval.epochs=[7]"))
    with pytest.raises(ConfigError, match="LIFT paths"):
        ev.evaluate(eval_cfg(f"run_dir={lift_run}", "eval.paths=[ddim]", "eval.epochs=[1]"))
    noema = run_copy("ema=off", "data.num_images=32", "trainer.epochs=1", name="noema")
    with pytest.raises(WeightsError, match="without EMA"):
        ev.evaluate(eval_cfg(f"run_dir={noema}", "eval.weights=[ema]"))


def test_baseline_uses_ddim_and_warns_on_small_counts(run_copy, eval_cfg):
    run = run_copy("model=baseline", "data.num_images=32", "trainer.epochs=1", "ema.decay=0.9")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ev.evaluate(eval_cfg(f"run_dir={run}"))
    assert any("rank-deficient" in str(w.message) for w in caught)
    assert {(r["weights"], r["path"]) for r in rows(out)} == {("raw", "ddim"), ("ema", "ddim")}


def test_a_smoke_run_is_evaluated_with_its_presets_eval_settings(lift_run):
    # lift_run was trained with experiment=smoke: its config.yaml holds the smoke eval settings
    cfg = compose("evaluate", [f"run_dir={lift_run}"])
    assert cfg.eval.heatmap.grid_size == 30  # the reference default, before the run is read
    got = ev.with_run_eval_defaults(cfg, [f"run_dir={lift_run}"])
    assert got.eval.heatmap.grid_size == 10 and got.eval.num_images == 384
    assert got.eval.paths == ["dp_total"]    # keys the preset does not set keep the defaults
    mine = [f"run_dir={lift_run}", "eval.num_images=24", "eval.heatmap.grid_size=4"]
    got = ev.with_run_eval_defaults(compose("evaluate", mine), mine)
    assert got.eval.num_images == 24 and got.eval.heatmap.grid_size == 4  # the command line wins
    assert got.eval.heatmap.num_probes == 1                                # the rest: the run's
    named = [f"run_dir={lift_run}", "experiment=smoke"]
    assert ev.with_run_eval_defaults(compose("evaluate", named), named).eval.heatmap.grid_size == 10


def test_a_run_trained_before_the_schedule_was_recorded_keeps_the_unclipped_one(
        run_copy, eval_cfg, caplog):
    run = run_copy("model=lift", "diffusion=cosine", "data.num_images=32", "trainer.epochs=1")
    path = run / "checkpoints" / "epoch_0001.pt"
    state = torch.load(path, weights_only=False)
    del state["config"]["diffusion"]  # what a checkpoint written before this change holds
    torch.save(state, path)
    with caplog.at_level("WARNING", logger="explore.evaluate"):
        out = ev.evaluate(eval_cfg(f"run_dir={run}", "eval.weights=[raw]",
                                   "eval.paths=[dp_total]"))
    assert [r["schedule"] for r in rows(out)] == ["cosine"]
    said = [r.message for r in caplog.records if "names no noise schedule" in r.message]
    assert len(said) == 1 and "unclipped cosine" in said[0]  # said once, not per row
    heatmaps = [p.name for p in (run / "eval" / "heatmaps").glob("*.npz")]
    assert heatmaps == ["epoch_0001_raw_cosine_g4_k1_n2_s42.npz"]
    # the same run trained with the study's schedule: another row, never a replacement
    state["config"]["diffusion"] = compose("train").diffusion
    from omegaconf import OmegaConf
    state["config"]["diffusion"] = OmegaConf.to_container(state["config"]["diffusion"])
    torch.save(state, path)
    ev.evaluate(eval_cfg(f"run_dir={run}", "eval.weights=[raw]", "eval.paths=[dp_total]",
                         "eval.final_step=alpha_one"))
    assert sorted((r["schedule"], r["final_step"]) for r in rows(out)) == [
        ("cosine", "study"), ("study", "alpha_one")]


def test_final_step_is_checked(lift_run, eval_cfg):
    with pytest.raises(ConfigError, match="final_step='last'"):
        ev.evaluate(eval_cfg(f"run_dir={lift_run}", "eval.final_step=last"))


@pytest.mark.fast_e2e
def test_each_weight_set_is_scored_with_its_own_weights(run_copy, eval_cfg, monkeypatch):
    """The fast tier's one train + evaluate, end to end: a tiny Baseline trained with EMA 0.9
    (8 steps), whose EMA moved away from its initial weights and is not its raw weights, then
    evaluated: the model that generates the `ema` row holds the checkpoint's EMA shadow, the
    `raw` row's its model_state; and the two FIDs differ."""
    run = run_copy("model=baseline", "ema.decay=0.9")
    state = torch.load(run / "checkpoints" / "epoch_0002.pt", weights_only=True)
    shadow, raw = state["ema_state"]["shadow"], state["model_state"]
    differs = [k for k in shadow if not torch.equal(shadow[k], raw[k])]
    assert differs  # the EMA is not the raw weights after 8 steps at decay 0.9
    seed_everything(0)  # the initial weights, as training drew them
    initial = build(compose("train", TINY_TRAIN + ["model=baseline"]).model).state_dict()
    assert state["ema_state"]["num_updates"] == 8
    moved = [k for k in shadow if not torch.equal(shadow[k], initial[k].float())]
    assert sorted(moved) == sorted(shadow)  # every tensor averaged in the trained weights
    seen = []
    real_generate = evloop.generate

    def spy(ctx, model, *a, **kw):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_generate(ctx, model, *a, **kw)

    monkeypatch.setattr(evloop, "generate", spy)
    out = ev.evaluate(eval_cfg(f"run_dir={run}", "eval.epochs=[2]"))
    got = rows(out)
    assert [r["weights"] for r in got] == ["ema", "raw"]  # fid.csv is sorted; generation order:
    by_name = dict(zip(["raw", "ema"], seen))              # raw first, then the averages
    for k in shadow:
        assert torch.equal(by_name["ema"][k], shadow[k]), k
        assert torch.equal(by_name["raw"][k], raw[k]), k
    fid = {r["weights"]: float(r["fid"]) for r in got}
    assert fid["raw"] != fid["ema"]
