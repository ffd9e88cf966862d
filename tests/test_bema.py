"""BEMA (explore.ema.bema): the rule against hand-computed values and a float64 reference, its
limits (a plain EMA, the raw weights), exact resume, bank membership, diagnostics, validation."""

import io
import math

import pytest
import torch
from torch import nn

from explore.ema import BEMA, EMA, EMABank, EMAStateError, PostHocEMA, track_info


class Net(nn.Module):
    """Parameters, floating BatchNorm buffers (averaged) and an integer one (copied)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)


def walk(model, steps, seed=0, scale=0.1):
    """A random walk of every floating entry (as an optimizer would move them); yields after
    each step, with the integer buffer counting the steps."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        with torch.no_grad():
            for t in model.state_dict().values():
                if t.is_floating_point():
                    t.add_(scale * torch.randn(t.shape, generator=gen))
            model.bn.num_batches_tracked.add_(1)
        yield


def floats(model):
    return {k: v.detach().double().clone() for k, v in model.state_dict().items()
            if v.is_floating_point()}


def reference(thetas, w0, ema_power=0.5, bias_power=0.2, lag=10.0, multiplier=1.0, burn_in=0,
              update_every=1):
    """The issue's rule, literally, in float64: thetas[s - 1] = the weights after step s."""
    theta0 = mu = avg = w0
    out = []
    for s, theta in enumerate(thetas, start=1):
        t = s - burn_in
        if t < 0:
            avg = theta
        elif t == 0:
            theta0 = mu = avg = theta
        elif t % update_every == 0:
            base = lag + multiplier * t
            beta, alpha = base ** -ema_power, base ** -bias_power
            mu = {k: (1 - beta) * mu[k] + beta * theta[k] for k in theta}
            avg = {k: alpha * (theta[k] - theta0[k]) + mu[k] for k in theta}
        out.append(avg)
    return out


def scalar_model(value):
    m = nn.Module()
    m.w = nn.Parameter(torch.tensor(float(value)))
    return m


def set_scalar(m, value):
    with torch.no_grad():
        m.w.fill_(value)


# -- the rule ----------------------------------------------------------------------------------
def test_hand_computed_steps():
    # lag 3, multiplier 1, both powers 1: base = 3 + t, beta = alpha = 1 / base
    m = scalar_model(2.0)
    bema = BEMA(m, ema_power=1.0, bias_power=1.0, lag=3.0, multiplier=1.0)
    assert bema.shadow["w"].item() == 2.0  # the weights at construction
    got = []
    for v in (6.0, 12.0, 8.0):
        set_scalar(m, v)
        bema.update()
        got += [bema.mu["w"].item(), bema.shadow["w"].item()]
    # t=1, 1/4: mu = .75*2 + .25*6 = 3, out = 3 + .25*(6 - 2) = 4
    # t=2, 1/5: mu = .8*3 + .2*12 = 4.8, out = 4.8 + .2*(12 - 2) = 6.8
    # t=3, 1/6: mu = 5/6*4.8 + 8/6 = 16/3, out = 16/3 + (8 - 2)/6 = 19/3
    assert got == pytest.approx([3.0, 4.0, 4.8, 6.8, 16 / 3, 19 / 3], rel=1e-6)  # mu, out
    assert bema.theta0["w"].item() == 2.0


def test_hand_computed_burn_in_and_update_every():
    # burn_in 1, update_every 2: step 1 takes theta0, updates at steps 3 (t=2) and 5 (t=4)
    m = scalar_model(0.0)
    bema = BEMA(m, ema_power=1.0, bias_power=1.0, lag=2.0, multiplier=1.0, burn_in=1,
                update_every=2)
    got = []
    for v in (1.0, 3.0, 5.0, 7.0, 9.0):
        set_scalar(m, v)
        bema.update()
        got.append(bema.shadow["w"].item())
    # s=1: theta0 = mu = 1, out 1; s=2 (t=1): no update; s=3 (t=2, base 4): mu = .75 + 1.25
    # = 2, out = 2 + (5 - 1)/4 = 3; s=4: kept; s=5 (t=4, base 6): mu = 5/6*2 + 9/6 = 19/6,
    # out = 19/6 + (9 - 1)/6 = 27/6
    assert got == pytest.approx([1.0, 1.0, 3.0, 3.0, 4.5], rel=1e-6)
    assert bema.num_updates == 2 and bema.theta0["w"].item() == 1.0


SETTINGS = [dict(),
            dict(ema_power=0.7, bias_power=0.3, lag=2.0, multiplier=0.5, burn_in=3,
                 update_every=2),
            dict(ema_power=0.4, bias_power=0.1, lag=1.0, multiplier=2.0, burn_in=5,
                 update_every=3)]


@pytest.mark.parametrize("settings", SETTINGS)
def test_matches_float64_reference_over_a_random_walk(settings):
    torch.manual_seed(0)
    model = Net()
    bema = BEMA(model, **settings)
    w0 = floats(model)
    thetas, got = [], []
    for _ in walk(model, 40):
        bema.update()
        thetas.append(floats(model))
        got.append({k: v.double().clone() for k, v in bema.shadow.items()})
    want = reference(thetas, w0, **settings)
    for s, (g, w) in enumerate(zip(got, want), start=1):
        assert set(g) == set(w)
        for k in w:
            assert torch.allclose(g[k], w[k], rtol=1e-6, atol=1e-6), (s, k)
    burn_in, every = settings.get("burn_in", 0), settings.get("update_every", 1)
    assert bema.num_updates == (40 - burn_in) // every
    # integer buffers are copied, at the last update (it counts the steps)
    last = burn_in + every * bema.num_updates
    assert bema.state_dict()["buffers"]["bn.num_batches_tracked"].item() == last


def test_average_is_the_raw_weights_until_the_burn_in_ends():
    model = Net()
    init = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    bema = BEMA(model, burn_in=3, update_every=2)
    assert all(torch.equal(bema.shadow[k], v) for k, v in init.items())  # s = 0
    for s, _ in enumerate(walk(model, 4), start=1):
        bema.update()
        raw = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        if s <= 3:  # copies; at s = 3 theta0 and mu are taken too
            assert all(torch.equal(bema.shadow[k], v) for k, v in raw.items()), s
        if s == 3:
            assert all(torch.equal(bema.theta0[k], v) and torch.equal(bema.mu[k], v)
                       for k, v in raw.items())
            theta0 = {k: v.clone() for k, v in raw.items()}
    # s = 4 is t = 1: no update with update_every 2, the average is still the one of s = 3
    assert all(torch.equal(bema.shadow[k], v) for k, v in theta0.items())
    assert bema.num_updates == 0 and bema.decay is None
    assert bema.init_weight == 0.0  # theta0 = the weights of step 3, not the initialisation


def test_large_bias_power_is_the_ema_mu():
    m = scalar_model(1.0)
    bema = BEMA(m, ema_power=0.5, bias_power=60.0, lag=10.0)
    values = [1.0 + math.sin(k) + 0.05 * k for k in range(30)]
    ref, got = 1.0, []
    for t, v in enumerate(values, start=1):
        set_scalar(m, v)
        bema.update()
        d = 1.0 - (10.0 + t) ** -0.5  # an EMA whose decay is 1 - beta_t
        ref = d * ref + (1 - d) * v
        assert bema.shadow["w"].item() == pytest.approx(ref, rel=1e-6)
        assert torch.equal(bema.shadow["w"], bema.mu["w"])  # alpha underflows: mu exactly
        got.append(bema.decay)
    assert got[-1] == pytest.approx(1 - 40 ** -0.5)


def test_zero_ema_power_and_large_bias_power_is_the_raw_weights():
    model = Net()
    bema = BEMA(model, ema_power=0.0, bias_power=60.0, burn_in=2, update_every=3)
    for s, _ in enumerate(walk(model, 12), start=1):
        bema.update()
        if s == 2 or (s - 2) % 3 == 0:  # the burn-in's end and the update steps
            for k, v in model.state_dict().items():
                if v.is_floating_point():
                    assert torch.equal(bema.shadow[k], v), (s, k)
    assert bema.window_steps == 3.0  # mu's window N / beta with beta = 1


def test_the_bias_term_is_there():
    """mu alone lags a drifting weight; the bias term closes most of the gap."""
    m = scalar_model(0.0)
    bema = BEMA(m)
    for s in range(1, 201):
        set_scalar(m, float(s))  # a straight drift
        bema.update()
    mu, out = bema.mu["w"].item(), bema.shadow["w"].item()
    alpha = 210.0 ** -0.2
    assert out == pytest.approx(mu + alpha * 200.0, rel=1e-6)
    assert 200.0 - out < 0.6 * (200.0 - mu)


# -- resume ------------------------------------------------------------------------------------
def _same(a, b):
    for name in ("shadow", "mu", "theta0"):
        for k, v in getattr(a, name).items():
            assert torch.equal(v, getattr(b, name)[k]), (name, k)
    assert (a.step, a.num_updates, a.decay_product, a.last_alpha, a.last_beta) == \
        (b.step, b.num_updates, b.decay_product, b.last_alpha, b.last_beta)


def test_resume_mid_run_is_bitwise():
    torch.manual_seed(0)
    model = Net()
    settings = dict(ema_power=0.6, bias_power=0.25, lag=3.0, multiplier=0.5, burn_in=2,
                    update_every=3)
    a = BEMA(model, **settings)
    steps = walk(model, 30)
    for _ in range(10):
        next(steps)
        a.update()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = BEMA(model)  # other settings: the state's replace them
    b.load_state_dict(torch.load(buf))
    assert (b.ema_power, b.bias_power, b.lag, b.multiplier, b.burn_in, b.update_every) == \
        (0.6, 0.25, 3.0, 0.5, 2, 3)
    _same(a, b)
    for _ in steps:
        a.update()
        b.update()
    _same(a, b)
    assert a.num_updates == 9


def test_bank_resume_through_checkpoint_entries():
    torch.manual_seed(0)
    model = Net()
    bank = PostHocEMA(model, sigma_rels=[0.1], decays=[0.9], bema={"burn_in": 2, "lag": 4.0})
    steps = walk(model, 20)
    for _ in range(7):
        next(steps)
        bank.update()
    entries = bank.checkpoint_entries()
    assert set(entries["emas"]) == {"ema@0.9", "phema@0.1", "bema"}
    other = PostHocEMA(model, sigma_rels=[0.1], decays=[0.9], bema={})
    other.load_checkpoint_entries(entries)
    for _ in steps:
        bank.update()
        other.update()
    _same(bank.track("bema"), other.track("bema"))
    with pytest.raises(EMAStateError, match="bema"):  # a bank with BEMA from one without
        EMABank(model, decays=[0.9], bema={}).load_checkpoint_entries(
            EMABank(model, decays=[0.9]).checkpoint_entries())


def test_load_refuses_other_states():
    model = Net()
    bema = BEMA(model)
    with pytest.raises(EMAStateError, match="'ema'"):
        bema.load_state_dict(EMA(model).state_dict())
    state = bema.state_dict()
    del state["mu"]
    with pytest.raises(EMAStateError, match="mu"):
        BEMA(model).load_state_dict(state)
    with pytest.raises(ValueError, match="lag"):
        BEMA(model).load_state_dict({**bema.state_dict(), "lag": -1.0})


# -- in a bank -----------------------------------------------------------------------------------
def test_bank_track_equals_standalone_bema_and_leaves_the_others_alone():
    torch.manual_seed(0)
    model = Net()
    settings = dict(burn_in=3, update_every=2, bias_power=0.3)
    bank = EMABank(model, decays=[0.9, 0.99], bema=settings)
    plain = EMABank(model, decays=[0.9, 0.99])
    alone = BEMA(model, **settings)
    post = PostHocEMA(model, sigma_rels=[0.1], bema={**settings, "update_every": 1})
    for _ in walk(model, 15):
        for avg in (bank, plain, alone, post):
            avg.update()
    assert [t.name for t in bank.tracks] == ["ema@0.9", "ema@0.99", "bema"]
    assert bank.primary.name == "ema@0.9" and bank.decays == [0.9, 0.99]
    _same(bank.track("bema"), alone)
    for t in plain.tracks:
        assert all(torch.equal(v, bank.track(t.name).shadow[k]) for k, v in t.shadow.items())
    assert post.track("bema").update_every == 1 and post.track("bema").num_updates == 12
    assert set(post.snapshot()["emas"]) == {"phema@0.1"}  # BEMA is not snapshotted
    cols = bank.metrics()
    assert {"ema_share", "ema_share@0.99", "bema_share", "bema_rms_delta"} <= set(cols)
    assert cols["bema_share"] == pytest.approx(alone.share_post_init)
    with bank.average_parameters("bema"):
        assert torch.equal(model.fc1.weight, alone.shadow["fc1.weight"])


def test_one_foreach_lerp_per_update_and_in_place(monkeypatch):
    model = Net()
    bema = BEMA(model)
    ptrs = [t.data_ptr() for d in (bema.shadow, bema.mu, bema.theta0) for t in d.values()]
    calls = []
    real = torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda *a: calls.append(1) or real(*a))
    for _ in walk(model, 3):
        bema.update()
    assert len(calls) == 3  # mu: one kernel per update (one dtype group), no per-tensor loop
    assert [t.data_ptr() for d in (bema.shadow, bema.mu, bema.theta0)
            for t in d.values()] == ptrs


def test_low_precision_model_keeps_float32_buffers():
    model = Net().to(torch.bfloat16)
    bema = BEMA(model)
    for _ in walk(model, 3):
        bema.update()
    for d in (bema.shadow, bema.mu, bema.theta0):
        assert all(v.dtype == torch.float32 and not v.requires_grad for v in d.values())


# -- diagnostics ---------------------------------------------------------------------------------
def test_diagnostics_and_track_info():
    model = Net()
    bema = BEMA(model, ema_power=0.5, bias_power=0.2, lag=10.0, update_every=2)
    assert (bema.kind, bema.name, bema.start_step, bema.window_steps) == ("bema", "bema", 0, 0.0)
    assert bema.share_post_init == 0.0 and bema.decay is None
    planned = bema.planned_share(13)
    for _ in walk(model, 13):
        bema.update()
    betas = [(10.0 + t) ** -0.5 for t in (2, 4, 6, 8, 10, 12)]
    keep = math.prod(1 - b for b in betas)
    assert bema.init_weight == pytest.approx(keep - 22.0 ** -0.2)
    assert bema.init_weight < 0  # the bias term takes more of theta0 than mu keeps
    assert planned == pytest.approx(bema.share_post_init) == pytest.approx(1 - bema.init_weight)
    assert bema.decay == pytest.approx(1 - betas[-1])
    assert bema.window_steps == pytest.approx(2 / betas[-1])
    assert bema.delta_stats()["share"] == bema.share_post_init
    info = track_info(bema.state_dict())
    assert (info.kind, info.name, info.decay, info.sigma_rel) == ("bema", "bema", None, None)
    assert info.updates == 12 and info.step == 13  # optimizer steps covered: 6 updates x 2
    assert info.init_weight == pytest.approx(bema.init_weight)
    assert info.window_steps == pytest.approx(bema.window_steps)
    assert info.rule["burn_in"] == 0 and info.length(13) is None
    assert BEMA(model, ema_power=0.0).planned_share(5) == pytest.approx(1 + 15.0 ** -0.2)


def test_with_a_burn_in_nothing_of_the_initialisation_is_left():
    """The average is raw during the burn-in, and theta0 = mu = weights trained for burn_in
    steps after it: no "mostly its initial weights" warning, before or after it ends."""
    model = Net()
    bema = BEMA(model, burn_in=4, update_every=2)
    assert bema.start_step == 4 and bema.planned_share(3) == bema.planned_share(100) == 1.0
    for steps in (2, 9):  # inside the burn-in, then after it
        for _ in walk(model, steps):
            bema.update()
        assert bema.init_weight == 0.0 and bema.share_post_init == 1.0
        info = track_info(bema.state_dict())
        assert info.init_weight == 0.0 and info.rule["burn_in"] == 4
    # a state saved before this rule (init_weight from the formula) is read the same way
    old = {**bema.state_dict(), "init_weight": 0.9}
    assert track_info(old).init_weight == 0.0


@pytest.mark.parametrize("bad, match", [
    (dict(ema_power=-0.1), "ema_power"), (dict(bias_power=-1), "bias_power"),
    (dict(lag=0.0), "lag"), (dict(multiplier=0.0), "multiplier"), (dict(burn_in=-1), "burn_in"),
    (dict(update_every=0), "update_every"), (dict(lag=0.2, multiplier=0.5), "beta <= 1"),
    (dict(ema_power=float("nan")), "ema_power")])
def test_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        BEMA(Net(), **bad)
    BEMA(Net(), ema_power=0.0, lag=0.2, multiplier=0.5)  # beta = 1 whatever the base


def test_overhead_bench_times_bema_against_an_ema():
    from bench.hotpath.ema_overhead import bema_table, measure_bema

    r = measure_bema(Net(), 3, torch.device("cpu"))
    assert r["bema_mb"] == pytest.approx(3 * r["ema_mb"]) and r["bema_best_ms"] > 0
    assert "BEMA's update takes" in bema_table(r, 0.5) and "% of a" in bema_table(r, 0.5)
