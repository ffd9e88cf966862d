"""EMA bank: several decays in one pass, against independent EMAs and torch.optim.swa_utils;
its checkpoints, metrics, resume and evaluation (one weight set per decay, each with the
progress-hiding guard)."""

import io
import json
import logging
import warnings

import pytest
import torch
from tiny import rows
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from explore import evaluate as ev
from explore.core.config import compose
from explore.ema import EMA, EMABank, EMAStateError, PostHocEMA
from explore.evaluation.weights import weight_sets
from explore.run.checkpoint import load_checkpoint
from explore.train import train

DECAYS = [0.9, 0.99, 0.999]


class Net(nn.Module):
    """Parameters, floating BatchNorm buffers (averaged) and an integer one (copied)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def random_steps(model, steps, seed=0):
    """Adam on random regression batches: yields after every optimizer step."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        x, y = torch.randn(32, 6, generator=gen), torch.randn(32, 3, generator=gen)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        yield


# -- 5: against an independent implementation ---------------------------------------------------
def test_bank_equals_torch_averaged_model_bitwise():
    torch.manual_seed(0)
    model = Net()
    bank = EMABank(model, decays=DECAYS)
    # AveragedModel copies on its first update_parameters: do it on the initial weights, so both
    # start from them; use_buffers=True averages BatchNorm's floating statistics, as the bank does
    refs = [AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d), use_buffers=True)
            for d in DECAYS]
    for ref in refs:
        ref.update_parameters(model)
    for _ in random_steps(model, 300):
        bank.update()
        for ref in refs:
            ref.update_parameters(model)
    compared = 0
    for d, ref in zip(DECAYS, refs):
        shadow = bank.track(f"ema@{d}").shadow
        theirs = ref.module.state_dict()
        assert set(shadow) == {k for k, v in theirs.items() if v.is_floating_point()}
        for name, tensor in shadow.items():
            assert torch.equal(tensor, theirs[name]), (d, name)
            compared += 1
        # integer buffers are copied from the model (AveragedModel interpolates and truncates)
        buffers = bank.track(f"ema@{d}").state_dict()["buffers"]
        assert torch.equal(buffers["bn.num_batches_tracked"], model.bn.num_batches_tracked)
    assert compared == 3 * 8  # 6 parameters + running_mean, running_var
    assert not torch.equal(bank.track("ema@0.999").shadow["fc1.weight"], model.fc1.weight)


# -- 1: the bank -----------------------------------------------------------------------------------
def test_bank_equals_separate_emas_with_every_option():
    torch.manual_seed(0)
    model = Net()
    opts = dict(start_step=3, update_every=2, warmup="cap", bias_correction=True)
    bank = EMABank(model, decays=DECAYS, **opts)
    singles = [EMA(model, decay=d, **opts) for d in DECAYS]
    for _ in random_steps(model, 41):
        bank.update()
        for ema in singles:
            ema.update()
    for ema in singles:
        track = bank.track(ema.name)
        assert track.num_updates == ema.num_updates == 19
        for name, tensor in ema.shadow.items():
            assert torch.equal(track.shadow[name], tensor), (ema.name, name)


def test_one_foreach_lerp_per_shadow_and_in_place(monkeypatch):
    model = Net()
    bank = EMABank(model, decays=DECAYS)
    ptrs = [t.data_ptr() for d in DECAYS for t in bank.track(f"ema@{d}").shadow.values()]
    calls = []
    real = torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda *a: calls.append(1) or real(*a))
    for _ in random_steps(model, 2):
        bank.update()
    assert len(calls) == 2 * len(DECAYS)  # one kernel per shadow and step (one dtype group)
    assert [t.data_ptr() for d in DECAYS for t in bank.track(f"ema@{d}").shadow.values()] == ptrs


def test_bank_shadows_stay_float32_and_out_of_autograd():
    model = Net().to(torch.bfloat16)
    bank = EMABank(model, decays=[0.999, 0.9999])
    ref = {d: model.fc1.bias.detach().double() for d in (0.999, 0.9999)}
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        bank.update()
        for d in ref:  # float64 reference on the bf16 weights the bank saw
            ref[d] = d * ref[d] + (1 - d) * model.fc1.bias.detach().double()
    for t in bank.tracks:
        for v in t.shadow.values():
            assert v.dtype == torch.float32 and not v.requires_grad
        # a bf16 shadow would round each update of ~0.001 away entirely
        assert torch.allclose(t.shadow["fc1.bias"].double(), ref[t.decay], atol=1e-6)
    assert not torch.equal(bank.track("ema@0.999").shadow["fc1.bias"],
                           bank.track("ema@0.9999").shadow["fc1.bias"])


def test_bank_metrics_checkpoint_entries_and_primary():
    model = Net()
    bank = EMABank(model, decays=[0.9, 0.99], primary=0.99)
    for _ in random_steps(model, 5):
        bank.update()
    m = bank.metrics()
    assert m["ema_share"] == pytest.approx(1 - 0.99**5)  # the primary, unsuffixed
    assert m["ema_share@0.9"] == pytest.approx(1 - 0.9**5)
    assert {"ema_rms_delta", "ema_rms_delta@0.9", "ema_max_abs_delta@0.9"} <= set(m)
    assert "ema_share@0.99" not in m
    entries = bank.checkpoint_entries()
    assert entries["ema_decay"] == 0.99 and entries["ema_state"]["decay"] == 0.99
    assert set(entries["emas"]) == {"ema@0.9", "ema@0.99"}
    assert entries["emas"]["ema@0.99"] is entries["ema_state"]
    # torch.save stores the primary's tensors once although they appear twice
    sizes = {}
    for name, obj in (("bank", entries), ("one", {"ema_state": entries["ema_state"]})):
        buf = io.BytesIO()
        torch.save(obj, buf)
        sizes[name] = buf.tell()
    assert sizes["bank"] < 2.2 * sizes["one"]
    assert bank.decays == [0.99, 0.9] and bank.sigma_rels == []
    with pytest.raises(ValueError, match="primary"):
        EMABank(model, decays=[0.9], primary=0.5)
    with pytest.raises(ValueError, match="repeat"):
        EMABank(model, decays=[0.9, 0.9])


def test_bank_resumes_from_entries_and_refuses_missing_tracks():
    model = Net()
    bank = EMABank(model, decays=DECAYS, warmup="power")
    for _ in random_steps(model, 7):
        bank.update()
    entries = bank.checkpoint_entries()
    other = EMABank(Net(), decays=DECAYS, warmup="power")
    other.load_checkpoint_entries(entries)
    for t in bank.tracks:
        o = other.track(t.name)
        assert (o.step, o.num_updates, o.decay_product) == (t.step, t.num_updates,
                                                            t.decay_product)
        assert all(torch.equal(v, o.shadow[k]) for k, v in t.shadow.items())
    with pytest.raises(EMAStateError, match="ema@0.5"):
        EMABank(Net(), decays=[0.9, 0.5]).load_checkpoint_entries(entries, "ckpt")
    with pytest.raises(EMAStateError, match="'ema'"):  # a bank state into a power EMA
        PostHocEMA(Net(), sigma_rels=[0.1]).load_checkpoint_entries(
            {"ema_state": entries["ema_state"], "emas": {"phema@0.1": entries["ema_state"]}})


# -- training with a bank ----------------------------------------------------------------------
BANK = ["ema=multi", "ema.decays=[0.9,0.5]"]


def test_train_bank_run_folder(trained_run):
    run = trained_run(*BANK)
    meta = json.loads((run / "run.json").read_text())
    assert meta["ema_decay"] == 0.9 and meta["ema_decays"] == [0.9, 0.5]
    last = rows(run / "metrics.csv")[-1]
    assert float(last["ema_share"]) == pytest.approx(1 - 0.9**8)
    assert float(last["ema_share@0.5"]) == pytest.approx(1 - 0.5**8)
    assert float(last["ema_rms_delta@0.5"]) < float(last["ema_rms_delta"])  # shorter: closer
    state = load_checkpoint(run / "checkpoints" / "epoch_0002.pt")
    assert state["ema_decay"] == 0.9 and state["ema_state"]["decay"] == 0.9
    assert set(state["emas"]) == {"ema@0.9", "ema@0.5"}
    sets = weight_sets(state, steps_per_epoch=4)
    assert list(sets) == ["raw", "ema", "ema@0.5"]
    assert sets["ema@0.5"].share == pytest.approx(1 - 0.5**8)
    assert sets["ema@0.5"].lag_epochs(4) == pytest.approx(2 / 4)
    assert sets["ema"].lag_epochs(4) == pytest.approx(10 / 4)


def test_bank_resume_is_bitwise_identical(tiny_cfg, trained_run, run_copy):
    opts = [*BANK, "ema.warmup=cap", "ema.bias_correction=true", "ema.update_every=3"]
    straight = trained_run(*opts)
    half = run_copy(*opts, "trainer.epochs=1")
    resumed = train(tiny_cfg(*opts, "resume=true"), half)
    a = load_checkpoint(straight / "checkpoints" / "epoch_0002.pt")
    b = load_checkpoint(resumed / "checkpoints" / "epoch_0002.pt")
    for name in ("ema@0.9", "ema@0.5"):
        sa, sb = a["emas"][name], b["emas"][name]
        assert (sa["num_updates"], sa["decay_product"]) == (sb["num_updates"],
                                                            sb["decay_product"])
        for k, v in sa["shadow"].items():
            assert torch.equal(v, sb["shadow"][k]), (name, k)
    assert a["emas"]["ema@0.9"]["num_updates"] == 2  # steps 3 and 6 of 8


# -- 4: evaluation scores every decay, each with its share, flag and lag -------------------------
def test_evaluate_scores_every_decay_with_guard(run_copy, tmp_path, caplog):
    run = run_copy("model=baseline", "data.num_images=32", *BANK, name="bank")
    cfg = compose("evaluate", [f"run_dir={run}", "device=cpu", "progress=false",
                               "eval.num_images=16", "eval.num_steps=2", "eval.batch_size=16",
                               "eval.fid.extractor=randconv-256", "eval.grid=false",
                               f"eval.fid.cache_root={tmp_path / 'fid'}", "eval.epochs=[2]"])
    with caplog.at_level(logging.INFO, logger="explore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="eval.num_images")  # tiny FID on purpose
        out = ev.evaluate(cfg)
    got = {r["weights"]: r for r in rows(out)}
    assert set(got) == {"raw", "ema", "ema@0.5"}
    # 4 optimizer steps: 1 - 0.9^4 = 0.34 (mostly initial weights), 1 - 0.5^4 = 0.94
    assert float(got["ema"]["ema_share"]) == pytest.approx(1 - 0.9**4, abs=1e-4)
    assert got["ema"]["ema_share_low"] == "True"
    assert float(got["ema@0.5"]["ema_share"]) == pytest.approx(1 - 0.5**4, abs=1e-4)
    assert got["ema@0.5"]["ema_share_low"] == "False"
    assert float(got["ema"]["lag_epochs"]) == pytest.approx(10 / 2)   # 2 steps per epoch
    assert float(got["ema@0.5"]["lag_epochs"]) == pytest.approx(2 / 2)
    assert got["raw"]["ema_share"] == "" and got["raw"]["ema_share_low"] == ""
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("epoch 2 ema:" in w and "34%" in w for w in warned)
    assert not any("ema@0.5" in w for w in warned)
    assert any("ema@0.5: EMA decay 0.5" in r.getMessage() and "lag 1.0 epochs" in r.getMessage()
               for r in caplog.records)
    # the report shows raw and every variant, and flags the EMA that was mostly initial weights
    from analysis.report import make_report

    report = make_report(runs=[run], out=tmp_path / "report", formats=("png",)).read_text()
    assert "EMA 0.9" in report and "EMA 0.5" in report and "†" in report


def test_overhead_module_measures_time_and_memory():
    from bench.hotpath.ema_overhead import measure_bank, measure_memory, table

    model, cpu = Net(), torch.device("cpu")
    shadow_mib, _ = measure_memory(model, 2, cpu)
    params = sum(p.numel() for p in model.state_dict().values() if p.is_floating_point())
    assert shadow_mib == pytest.approx(2 * 4 * params / 2**20)
    rows = [measure_bank(model, n, 3, cpu) for n in (1, 2)]
    assert [r["decays"] for r in rows] == [1, 2] and all(r["best_ms"] > 0 for r in rows)
    text = table(rows, params, 0.5, 4)
    assert "Per extra shadow" in text and "of a step" in text
