"""BEMA in a run (issue 23): `ema=bema` and a BEMA beside EMA and power EMAs in one bank train,
resume bit for bit, record their settings, and are evaluated as the weight set `bema`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny import rows

from explore import evaluate as ev
from explore.core.config import compose, ema_tag
from explore.ema.names import parse_weights
from explore.run.folder import RunFolder
from explore.train import train

pytestmark = pytest.mark.filterwarnings("ignore:eval.num_images")


def test_bema_alone_trains_and_is_evaluated_beside_raw(run_copy, eval_cfg):
    run = run_copy("model=baseline", "ema=bema", "ema.burn_in=2", "ema.update_every=2",
                   "data.num_images=32")
    info = json.loads((run / "run.json").read_text())
    assert info["bema"] == {"ema_power": 0.5, "bias_power": 0.2, "lag": 10.0,
                            "multiplier": 1.0, "burn_in": 2, "update_every": 2}
    assert info["ema_decays"] == [] and info["ema_decay"] is None
    state = torch.load(run / "checkpoints" / "epoch_0002.pt", weights_only=True)
    assert set(state["emas"]) == {"bema"} and state["ema_state"]["kind"] == "bema"
    # 2 epochs x 2 steps: burn-in to step 2, updates at t = 2: the average moved off the raw
    shadow, raw = state["ema_state"]["shadow"], state["model_state"]
    assert any(not torch.equal(shadow[k], raw[k]) for k in shadow)
    header = rows(run / "metrics.csv")[0]
    assert "bema_rel_rms_delta" in header and "ema_rel_rms_delta" not in header
    out = ev.evaluate(eval_cfg(f"run_dir={run}", "eval.epochs=[2]"))
    made = {r["weights"]: r for r in rows(out)}
    assert sorted(made) == ["bema", "raw"]
    assert made["bema"]["fid"] != made["raw"]["fid"]
    assert made["bema"]["sigma_rel"] == ""  # BEMA has no single EMA length
    assert float(made["bema"]["lag_epochs"]) > 0


def test_bema_beside_ema_and_power_emas_in_one_bank(run_copy, eval_cfg):
    run = run_copy("model=baseline", "ema=posthoc", "ema.sigma_rels=[0.1]", "ema.decays=[0.9]",
                   "ema.bema={}", "data.num_images=32")
    assert json.loads((run / "run.json").read_text())["bema"]["lag"] == 10.0
    out = ev.evaluate(eval_cfg(f"run_dir={run}", "eval.epochs=[2]"))
    assert sorted(r["weights"] for r in rows(out)) == ["bema", "ema", "phema@0.1", "raw"]
    # the snapshots for post-hoc EMA hold the power EMAs only
    snaps = RunFolder(run).snapshots()
    assert snaps and "bema" not in torch.load(snaps[-1], weights_only=True)["emas"]


def test_a_run_with_bema_resumes_bit_for_bit(tiny_cfg, trained_run, run_copy):
    cfg = ("model=baseline", "ema=multi", "ema.decays=[0.9]", "ema.bema={burn_in: 1}",
           "data.num_images=32")
    straight = trained_run(*cfg, "trainer.epochs=3")
    half = run_copy(*cfg, "trainer.epochs=1")
    resumed = train(tiny_cfg(*cfg, "trainer.epochs=3", "resume=true"), half)
    a = torch.load(straight / "checkpoints" / "epoch_0003.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "epoch_0003.pt", weights_only=True)
    for key in ("shadow", "mu", "theta0"):
        for name, value in a["emas"]["bema"][key].items():
            assert torch.equal(value, b["emas"]["bema"][key][name]), (key, name)


def test_bema_names_and_tags():
    name = parse_weights("bema")
    assert (name.kind, name.id, name.label) == ("bema", "bema", "BEMA")
    assert math.isnan(name.sigma_rel) and math.isnan(name.decay)
    assert ema_tag(compose("train", ["ema=bema"]).ema) == "bema"
    assert ema_tag(compose("train", ["ema=posthoc", "ema.bema={}"]).ema) == \
        "phema0.05+0.1+bema"
    assert ema_tag(compose("train", ["ema=multi"]).ema) == "ema0.999+0.9999"
