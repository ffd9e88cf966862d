"""Evaluation with several sampling seeds, several metrics and bootstrap replicates (issue 14):
raw and EMA paired per seed, rows added only where missing, the real subset and the heatmap
independent of the sampling seed, metrics completed from kept features."""

from __future__ import annotations

import csv

import pytest
import torch
from omegaconf import OmegaConf
from tiny import rows

from explore import evaluate as ev
from explore.core.config import compose, to_plain
from explore.core.errors import ConfigError
from explore.evaluation import loop as evloop
from explore.evaluation.settings import EvalSettings, sample_seeds
from explore.nets.data import subset
from explore.run.folder import RunFolder
from explore.run.results import ResultsFile, parse_replicates

# the tiny evaluations score fewer images than FID needs to be meaningful, on purpose
pytestmark = pytest.mark.filterwarnings("ignore:eval.num_images")


def _ema_is_raw(run) -> None:
    """Overwrite every checkpoint's EMA shadow (and buffers) with its raw weights."""
    for _, path in RunFolder(run).checkpoints():
        state = torch.load(path, weights_only=True)
        raw = state["model_state"]
        ema = state["ema_state"]
        ema["shadow"] = {k: raw[k].clone() for k in ema["shadow"]}
        ema["buffers"] = {k: raw[k].clone() for k in ema.get("buffers") or {} if k in raw}
        torch.save(state, path)


@pytest.fixture(scope="module")
def twins(run_cache, tmp_path_factory):
    """A Baseline and a LIFT run (one epoch each) whose EMA equals their raw weights."""
    root = tmp_path_factory.mktemp("twins")
    runs = {}
    for model in ("baseline", "lift"):
        runs[model] = run_cache.copy(root / model, f"model={model}", "ema.decay=0.9",
                                     "data.num_images=32", "trainer.epochs=1")
        _ema_is_raw(runs[model])
    return runs


@pytest.fixture
def lift_run(run_copy):
    """The tiny LIFT run (EMA 0.9, 2 epochs), the test's own copy to evaluate into."""
    return run_copy("model=lift", "ema.decay=0.9", name="lift")


def _record(monkeypatch) -> list[dict]:
    """Every row's unrounded metrics with its weight set and seed, as evaluation made them."""
    seen, current = [], {}
    real_weight_set, real_measure = evloop.evaluate_weight_set, evloop.metriclib.measure

    def weight_set(ctx, model, epoch, ws, todo, step):
        current["weights"] = ws.name
        return real_weight_set(ctx, model, epoch, ws, todo, step)

    def measure_row(ctx, feats, seed, old, *rest):
        out = real_row(ctx, feats, seed, old, *rest)
        seen.append({"weights": current["weights"], "seed": seed, **values[-1],
                     "boot": out.get("fid_boot")})
        return out

    values = []

    def measure(*a, **kw):
        values.append(real_measure(*a, **kw))
        return values[-1]

    real_row = evloop.measure_row
    monkeypatch.setattr(evloop, "evaluate_weight_set", weight_set)
    monkeypatch.setattr(evloop, "measure_row", measure_row)
    monkeypatch.setattr(evloop.metriclib, "measure", measure)
    return seen


@pytest.mark.parametrize("model", ["baseline", "lift"])
def test_raw_and_ema_are_paired_per_seed(twins, eval_cfg, monkeypatch, model):
    """A checkpoint whose EMA is its raw weights gives the same FID for raw and ema, to 1e-9,
    for every sampling seed: both start from the seed's noise, and LIFT's two weight sets find
    the same DP path on their heatmaps (the subset seed's, not the sampling seed's). The seeds
    themselves differ. Fails if the EMA is given other noise than raw."""
    seen = _record(monkeypatch)
    ev.evaluate(eval_cfg(f"run_dir={twins[model]}", "eval.seeds=[0,1,2]",
                         "eval.metrics=[fid,kid]", "eval.paths=[dp_total]"))
    by = {(r["weights"], r["seed"]): r for r in seen}
    assert sorted(by) == [(w, s) for w in ("ema", "raw") for s in (0, 1, 2)]
    for seed in (0, 1, 2):
        raw, ema = by[("raw", seed)], by[("ema", seed)]
        assert abs(raw["fid"] - ema["fid"]) <= 1e-9, (seed, raw["fid"], ema["fid"])
        assert abs(raw["kid"] - ema["kid"]) <= 1e-12
    fids = [by[("raw", s)]["fid"] for s in (0, 1, 2)]
    assert len(set(fids)) == 3  # other seeds, other images
    # one seed with bootstrap replicates: replicate b of raw and ema resample the same images
    seen.clear()
    ev.evaluate(eval_cfg(f"run_dir={twins[model]}", "eval.seeds=[5]", "eval.bootstrap=8",
                         "eval.metrics=[fid]"))
    raw, ema = (next(r for r in seen if r["weights"] == w) for w in ("raw", "ema"))
    assert raw["boot"] == ema["boot"] and len(parse_replicates(raw["boot"])) == 8


def test_more_seeds_add_only_their_rows(lift_run, eval_cfg, monkeypatch):
    seen = _record(monkeypatch)
    base = [f"run_dir={lift_run}", "eval.epochs=[2]", "eval.weights=[raw]"]
    out = ev.evaluate(eval_cfg(*base, "eval.seeds=[0]"))
    ev.evaluate(eval_cfg(*base, "eval.seeds=[0,1,2]"))
    assert [r["seed"] for r in seen] == [0, 1, 2]  # seed 0 was not redone
    got = [r for r in rows(out) if r["epoch"] == "2" and r["weights"] == "raw"]
    assert sorted(r["sample_seed"] for r in got) == ["0", "1", "2"]
    assert len({r["fid"] for r in got}) == 3
    assert {(r["subset_seed"], r["num_real"]) for r in got} == {("42", "24")}
    # one heatmap for the weight set, drawn with the subset seed, whatever the sampling seeds
    heatmaps = sorted(p.name for p in (lift_run / "eval" / "heatmaps").glob("epoch_0002_raw*"))
    assert heatmaps == ["epoch_0002_raw_study_g4_k1_n2_s42.npz",
                        "epoch_0002_raw_study_g4_k1_n2_s42.png"]
    grids = sorted(p.name for p in (lift_run / "eval" / "grids").glob("epoch_0002_raw_*"))
    assert grids == [f"epoch_0002_raw_dp_total_s{s}.png" for s in (0, 1, 2)]
    # eval.seeds=N is eval.seeds=[N]; the row of seed 1 is there already
    ev.evaluate(eval_cfg(*base, "eval.seeds=1"))
    assert len(seen) == 3


def test_real_subset_does_not_depend_on_the_sampling_seed(lift_run, eval_cfg):
    def prepare(*overrides):
        return evloop.prepare(EvalSettings.from_config(to_plain(eval_cfg(*overrides))))[0]

    contexts = [prepare(f"run_dir={lift_run}", f"eval.seeds={s}") for s in ("[0]", "[7,8]")]
    assert torch.equal(contexts[0].real, contexts[1].real)
    # the real subset of rows made before sampling seeds existed (drawn with eval.seed 42)
    assert torch.equal(contexts[0].real, subset(contexts[0].data.images, 24, 42))
    assert len(contexts[0].real) == 24 < len(contexts[0].data)
    assert contexts[1].seeds == (7, 8) and contexts[1].bootstrap == 0  # t over seeds instead
    assert contexts[0].real_name == contexts[1].real_name
    other = prepare(f"run_dir={lift_run}", "eval.subset_seed=3")
    assert not torch.equal(other.real, contexts[0].real)


def test_missing_metrics_are_completed_from_kept_features(lift_run, eval_cfg, monkeypatch):
    calls = []
    real_generate = evloop.generate
    monkeypatch.setattr(evloop, "generate",
                        lambda *a, **k: calls.append(1) or real_generate(*a, **k))
    base = [f"run_dir={lift_run}", "eval.epochs=[1]", "eval.weights=[raw]", "eval.seeds=[3]"]
    out = ev.evaluate(eval_cfg(*base, "eval.metrics=[fid]", "eval.keep_features=true"))
    before = next(r for r in rows(out) if r["epoch"] == "1" and r["sample_seed"] == "3")
    assert before["kid"] == before["precision"] == "" and len(calls) == 1
    kept = list((lift_run / "eval" / "features").glob("epoch_0001_raw_dp_total_s3_*.npz"))
    assert len(kept) == 1
    ev.evaluate(eval_cfg(*base, "eval.metrics=[fid,kid,prc]", "eval.bootstrap=5"))
    after = next(r for r in rows(out) if r["epoch"] == "1" and r["sample_seed"] == "3")
    assert len(calls) == 1  # no sampling: the kept features were enough
    assert after["fid"] == before["fid"]
    assert all(after[c] != "" for c in ("kid", "kid_std", "precision", "recall"))
    assert len(parse_replicates(after["fid_boot"])) == 5 and after["boot_seed"] == "0"
    # without kept features a row lacking a metric is sampled again
    ev.evaluate(eval_cfg(*base[:-1], "eval.seeds=[4]", "eval.metrics=[fid]"))
    ev.evaluate(eval_cfg(*base[:-1], "eval.seeds=[4]", "eval.metrics=[fid,kid]"))
    assert len(calls) == 3


def test_seed_options_are_checked(lift_run, eval_cfg, tmp_path):
    # eval.seed=N (before eval.seeds) is no option any more: refused by name
    with pytest.raises(Exception, match="eval.seed"):
        ev.evaluate(eval_cfg(f"run_dir={lift_run}", "eval.seed=3"))
    with pytest.raises(ConfigError, match="eval.seeds"):
        ev.evaluate(eval_cfg(f"run_dir={lift_run}", "eval.seeds=[]"))
    with pytest.raises(ConfigError, match="eval.metrics"):
        ev.evaluate(eval_cfg(f"run_dir={lift_run}", "eval.metrics=[fid,is]"))
    assert sample_seeds(eval_cfg("eval.seeds=3").eval.seeds) == (3,)
    assert sample_seeds(eval_cfg("eval.seeds=[2,0,2]").eval.seeds) == (2, 0)
    # a run trained with an older preset stored eval.seed: it is not a sampling seed request
    old = tmp_path / "old"
    old.mkdir()
    OmegaConf.save(OmegaConf.create({"eval": {"seed": 42, "num_images": 512}}),
                   old / "config.yaml")
    overrides = [f"run_dir={old}", "eval.seeds=[0,1,2]"]
    cfg = ev.with_run_eval_defaults(compose("evaluate", overrides), overrides)
    assert sample_seeds(cfg.eval.seeds) == (0, 1, 2) and cfg.eval.num_images == 512
    assert EvalSettings.from_config(to_plain(cfg)).eval.seeds == (0, 1, 2)


def test_the_study_forwards_eval_seeds_to_evaluation_jobs(tmp_path):
    from launch.study import split_overrides

    train_o, eval_o = split_overrides(["experiment=smoke", "device=cpu", "eval.seeds=[0,1,2]",
                                       "eval.metrics=[fid,kid,prc]", "study.name=x"])
    assert "eval.seeds=[0,1,2]" not in train_o
    cfg = compose("evaluate", eval_o + [f"run_dir={tmp_path}", "progress=false"])  # as eval_job
    assert sample_seeds(cfg.eval.seeds) == (0, 1, 2)
    assert list(cfg.eval.metrics) == ["fid", "kid", "prc"]


def test_rows_from_before_sampling_seeds_count_as_seed_42(lift_run, eval_cfg, monkeypatch):
    """fid.csv rows written before sample_seed and subset_seed existed were made with
    eval.seed 42, which also drew the real subset: they are the default seed's rows."""
    base = [f"run_dir={lift_run}", "eval.epochs=[1]", "eval.weights=[ema]",
            "eval.metrics=[fid]"]
    out = ev.evaluate(eval_cfg(*base))
    old_columns = ["run", "model", "seed", "ema_decay", "dataset", "image_size", "epoch", "step",
                   "weights", "path", "num_steps", "num_images", "extractor", "schedule",
                   "final_step", "fid", "ema_share", "ema_share_low", "lag_epochs", "seconds"]
    with open(out) as f:
        kept = [{k: r[k] for k in old_columns} for r in csv.DictReader(f)]
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old_columns)
        writer.writeheader()
        writer.writerows(kept)
    calls = []
    monkeypatch.setattr(evloop, "generate", lambda *a, **k: calls.append(1))
    ev.evaluate(eval_cfg(*base))
    assert calls == []
    assert {(r["sample_seed"], r["subset_seed"]) for r in ResultsFile(out).rows} == {
        ("42", "42")}
