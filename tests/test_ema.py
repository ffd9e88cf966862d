import pytest
import torch
from torch import nn

from explore.ema import EMA


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
