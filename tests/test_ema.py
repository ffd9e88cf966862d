import pytest
import torch
from torch import nn

from explore.ema import EMA, warmup_decay


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("running", torch.zeros(2))          # floating buffer: averaged
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # copied

    def forward(self, x):
        return self.lin(x)


def bump(model, amount):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(amount)
        model.running.add_(amount)
        model.count.add_(1)


def test_update_matches_hand_computation():
    torch.manual_seed(0)
    m = Tiny()
    w0 = m.lin.weight.detach().clone()
    ema = EMA(m, decay=0.9)
    bump(m, 1.0)
    ema.update()  # shadow = 0.9 w0 + 0.1 (w0 + 1) = w0 + 0.1
    assert torch.allclose(ema.shadow["lin.weight"], w0 + 0.1)
    bump(m, 1.0)
    ema.update()  # 0.9 (w0 + 0.1) + 0.1 (w0 + 2) = w0 + 0.29
    assert torch.allclose(ema.shadow["lin.weight"], w0 + 0.29)
    assert torch.allclose(ema.shadow["running"], torch.full((2,), 0.29))
    assert ema.state_dict()["buffers"]["count"].item() == 2  # copied, not averaged
    assert ema.num_updates == 2 and ema.share_post_init == pytest.approx(1 - 0.9**2)


def test_update_is_in_place():
    m = Tiny()
    ema = EMA(m, decay=0.99)
    ptrs = [t.data_ptr() for t in ema.shadow.values()]
    bump(m, 1.0)
    ema.update()
    assert [t.data_ptr() for t in ema.shadow.values()] == ptrs


def test_start_step_copies_until_then():
    m = Tiny()
    ema = EMA(m, decay=0.5, start_step=2)
    for _ in range(2):
        bump(m, 1.0)
        ema.update()
        assert torch.equal(ema.shadow["lin.weight"], m.lin.weight)  # still a copy
    w = m.lin.weight.detach().clone()
    bump(m, 1.0)
    ema.update()  # first average: 0.5 w + 0.5 (w + 1)
    assert torch.allclose(ema.shadow["lin.weight"], w + 0.5)
    assert ema.num_updates == 1 and ema.step == 3


def test_update_every_raises_decay_to_the_power():
    m = Tiny()
    w0 = m.lin.weight.detach().clone()
    ema = EMA(m, decay=0.9, update_every=3)
    for k in range(1, 7):
        bump(m, 1.0)
        ema.update()
        if k == 2:
            assert torch.equal(ema.shadow["lin.weight"], w0)  # not yet
    # updates at steps 3 and 6 with d = 0.9**3 = 0.729:
    d = 0.9**3
    s = d * w0 + (1 - d) * (w0 + 3)
    s = d * s + (1 - d) * (w0 + 6)
    assert torch.allclose(ema.shadow["lin.weight"], s, atol=1e-6)
    assert ema.num_updates == 2 and ema.share_post_init == pytest.approx(1 - 0.9**6)


def test_apply_restore_round_trip_and_context_manager():
    m = Tiny()
    ema = EMA(m, decay=0.5)
    bump(m, 2.0)
    ema.update()
    raw = m.lin.weight.detach().clone()
    with ema.average_parameters():
        assert torch.allclose(m.lin.weight, ema.shadow["lin.weight"])
        assert not torch.allclose(m.lin.weight, raw)
    assert torch.equal(m.lin.weight, raw)
    with pytest.raises(ZeroDivisionError):
        with ema.average_parameters():
            raise ZeroDivisionError
    assert torch.equal(m.lin.weight, raw)  # restored even on error
    ema.apply()
    with pytest.raises(RuntimeError, match="twice"):
        ema.apply()
    ema.restore()
    with pytest.raises(RuntimeError, match="without"):
        ema.restore()


def test_shadow_stays_float32_for_low_precision_models():
    m = Tiny().to(torch.bfloat16)
    ema = EMA(m, decay=0.999)
    assert all(t.dtype == torch.float32 for t in ema.shadow.values())
    before = ema.shadow["lin.weight"].clone()
    bump(m, 1.0)
    ema.update()
    # a bf16 shadow would round away an update of 0.001
    assert torch.allclose(ema.shadow["lin.weight"] - before, torch.full_like(before, 0.001),
                          atol=2e-5)


def test_state_dict_round_trip_resumes_counters():
    m = Tiny()
    ema = EMA(m, decay=0.9, update_every=2)
    for _ in range(5):
        bump(m, 1.0)
        ema.update()
    other = EMA(Tiny(), decay=0.1)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.9 and other.step == 5 and other.num_updates == 2
    for k, v in ema.shadow.items():
        assert torch.equal(other.shadow[k], v)


def test_loads_original_study_layout_and_prefixes():
    m = Tiny()
    shadow = {f"module.{n}": p.detach() + 1 for n, p in m.named_parameters()}
    ema = EMA(m)
    ema.load_state_dict({"decay": 0.9999, "shadow": shadow})
    assert torch.allclose(ema.shadow["lin.bias"], m.lin.bias + 1)
    assert torch.equal(ema.shadow["running"], m.running)  # not in the original: from the model


def test_load_rejects_foreign_state():
    ema = EMA(Tiny())
    with pytest.raises(ValueError, match="does not have"):
        ema.load_state_dict({"decay": 0.9, "shadow": {"conv.weight": torch.zeros(1)}})
    with pytest.raises(ValueError, match="shape"):
        ema.load_state_dict({"decay": 0.9, "shadow": {"lin.weight": torch.zeros(5, 5),
                                                      "lin.bias": torch.zeros(2)}})
    with pytest.raises(ValueError, match="lacks"):
        ema.load_state_dict({"decay": 0.9, "shadow": {"lin.weight": torch.zeros(2, 3)}})
    with pytest.raises(ValueError, match="decay"):
        EMA(Tiny(), decay=1.0)


def test_ema_actually_moves_during_training():
    torch.manual_seed(0)
    m = nn.Linear(4, 1)
    ema = EMA(m, decay=0.9)
    init = ema.shadow["weight"].clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        m(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        ema.update()
    assert not torch.allclose(ema.shadow["weight"], init)
    stats = ema.delta_stats()
    assert stats["rms_delta"] > 0 and 0 < stats["share"] < 1


# -- warm-up and bias correction (named options, off by default) -------------------------------
def scalar_model():
    m = nn.Module()
    m.w = nn.Parameter(torch.zeros(()))
    return m


def run_scalar(ema, model, values):
    out = []
    for v in values:
        with torch.no_grad():
            model.w.fill_(v)
        ema.update()
        out.append(ema.shadow["w"].item())
    return out


def reference(values, decay_at, start=0.0, debias=False):
    """Plain float64 loop of the formulas in explore.ema.exponential's docstring."""
    s, m, prod, out = start, 0.0, 1.0, []
    for t, v in enumerate(values):
        d = decay_at(t)
        s = d * s + (1 - d) * v
        m, prod = d * m + (1 - d) * v, prod * d
        out.append(m / (1 - prod) if debias else s)
    return out


VALUES = [float(v) for v in torch.linspace(1.0, 3.0, 40) + torch.sin(torch.arange(40.0))]


def test_warmup_rules_follow_their_formulas():
    assert warmup_decay(None, 5, 0.999) == 0.999
    assert warmup_decay("cap", 0, 0.999) == 0.0  # first averaged update takes the raw weights
    assert warmup_decay("cap", 5, 0.999) == pytest.approx(6 / 15)
    assert warmup_decay("cap", 10**6, 0.999) == 0.999  # capped at the decay
    assert warmup_decay("power", 10, 0.999) == pytest.approx(1 - 11 ** (-2 / 3))
    assert warmup_decay("power", 10, 0.999, inv_gamma=2, power=1) == pytest.approx(1 - 1 / 6)
    assert warmup_decay("power", 1, 0.999, min_decay=0.5) == 0.5
    with pytest.raises(ValueError, match="warmup"):
        EMA(Tiny(), warmup="linear")
    for rule in ("cap", "power"):
        m = scalar_model()
        ema = EMA(m, decay=0.9, warmup=rule)
        got = run_scalar(ema, m, VALUES)
        want = reference(VALUES, lambda t, r=rule: warmup_decay(r, t, 0.9))
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6), rule
        assert ema.share_post_init == 1.0  # d(0) = 0 dropped the initial weights


def test_warmup_counts_optimizer_steps_with_update_every():
    m = scalar_model()
    ema = EMA(m, decay=0.99, warmup="cap", update_every=2)
    got = run_scalar(ema, m, VALUES)[1::2]  # updates at steps 2, 4, ...
    want = reference(VALUES[1::2], lambda k: warmup_decay("cap", 2 * k, 0.99) ** 2)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_bias_correction_is_zero_init_divided_by_one_minus_decay_power():
    m = scalar_model()
    with torch.no_grad():
        m.w.fill_(100.0)  # initial weights far away: the corrected EMA must not see them
    ema = EMA(m, decay=0.9, bias_correction=True)
    got = run_scalar(ema, m, VALUES)
    assert got == pytest.approx(reference(VALUES, lambda t: 0.9, debias=True), rel=1e-6)
    assert got[0] == VALUES[0]  # exactly the trained weights after one step
    assert ema.share_post_init == 1.0 and ema.init_weight == 0.0
    plain = EMA(scalar_model(), decay=0.9)
    assert plain.bias_correction is False and plain.warmup is None  # off by default


def test_options_are_off_by_default_in_config():
    from explore.core.config import compose

    for group in ("on", "multi"):
        cfg = compose("train", [f"ema={group}"]).ema
        assert cfg.warmup is None and cfg.bias_correction is False, group


def test_resume_mid_warmup_is_exact():
    torch.manual_seed(0)
    m = Tiny()
    a = EMA(m, decay=0.99, warmup="power", bias_correction=True, update_every=2, start_step=1)
    for _ in range(7):
        bump(m, torch.rand(()).item())
        a.update()
    b = EMA(m, decay=0.5)
    b.load_state_dict(a.state_dict())
    assert (b.warmup, b.bias_correction, b.decay_product) == ("power", True, a.decay_product)
    for _ in range(9):
        bump(m, torch.rand(()).item())
        a.update()
        b.update()
    for k, v in a.shadow.items():
        assert torch.equal(v, b.shadow[k]), k


def test_old_states_without_decay_product_get_decay_power_n():
    m = Tiny()
    ema = EMA(m, decay=0.9)
    state = {k: v for k, v in EMA(m, decay=0.9).state_dict().items()
             if k not in ("decay_product", "init_weight")}
    state["num_updates"] = 5
    ema.load_state_dict(state)
    assert ema.share_post_init == pytest.approx(1 - 0.9**5)
