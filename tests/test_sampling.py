import pytest
import torch

from explore.nets.diffusion import CosineSchedule
from explore.nets.models import BaselineUNet, LiftUNet
from explore.nets.sampling import (
    ddim_step,
    ddim_timesteps,
    diagonal_path,
    sample_baseline,
    sample_lift,
)


def test_ddim_timesteps_of_the_study():
    ts = ddim_timesteps(18)
    assert ts[:3] == [990, 935, 880] and ts[-2:] == [55, 0]
    assert len(ts) == 19  # 19 model calls
    assert all(a - b == 55 for a, b in zip(ts, ts[1:]))
    assert ddim_timesteps(10) == list(range(900, -1, -100))  # 1000 // 10 divides T: 10 calls
    with pytest.raises(ValueError, match="num_steps"):
        ddim_timesteps(0)


def test_ddim_step_with_perfect_eps_recovers_x0():
    s = CosineSchedule()
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    eps = torch.randn_like(x0)
    ab = s.alpha_bar.float()
    xt = ab[500].sqrt() * x0 + (1 - ab[500]).sqrt() * eps
    # stepping to alpha_bar 1 (the final step) returns the clipped x0 estimate: x0 itself
    assert torch.allclose(ddim_step(xt, eps, ab[500], torch.tensor(1.0)), x0, atol=1e-5)
    x_next = ddim_step(xt, eps, ab[500], ab[400])
    assert torch.allclose(x_next, ab[400].sqrt() * x0 + (1 - ab[400]).sqrt() * eps, atol=1e-5)


class Counting(BaselineUNet):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = []

    def forward(self, x, t):
        self.calls.append(int(t[0]))
        return super().forward(x, t)


def test_baseline_sampler_calls_and_shapes():
    torch.manual_seed(0)
    m = Counting([8, 16], 16, 16).eval()
    imgs = sample_baseline(m, CosineSchedule(), 5, num_steps=18, seed=1, batch_size=5,
                           progress=False)
    assert imgs.shape == (5, 3, 16, 16) and imgs.dtype == torch.uint8
    assert m.calls == ddim_timesteps(18)[:-1]  # the study's last call (0 -> 0) is skipped


def test_one_seed_same_images_whatever_the_batch_size():
    torch.manual_seed(0)
    m = BaselineUNet([8, 16], 16, 16).eval()
    a = sample_baseline(m, CosineSchedule(), 6, num_steps=4, seed=3, batch_size=6, progress=False)
    b = sample_baseline(m, CosineSchedule(), 6, num_steps=4, seed=3, batch_size=4, progress=False)
    c = sample_baseline(m, CosineSchedule(), 6, num_steps=4, seed=4, batch_size=6, progress=False)
    assert (a.int() - b.int()).abs().max() <= 1  # float noise of batch composition at most
    assert not torch.equal(a, c)


def test_lift_sampler_follows_per_scale_path():
    seen = []

    class Spy(LiftUNet):
        def forward(self, x_hi, x_lo, t_hi, t_lo):
            seen.append((int(t_hi[0]), int(t_lo[0])))
            return super().forward(x_hi, x_lo, t_hi, t_lo)

    torch.manual_seed(0)
    m = Spy([8, 16], 16, 16).eval()
    path = [(999, 999), (900, 500), (600, 100), (200, 0), (0, 0)]
    hi, lo = sample_lift(m, CosineSchedule(), 3, path, seed=0, batch_size=2, progress=False,
                         return_low=True)
    assert hi.shape == (3, 3, 16, 16) and lo.shape == (3, 3, 8, 8)
    assert seen[:4] == path[:4]
    assert diagonal_path(18)[0] == (990, 990) and diagonal_path(18)[-1] == (0, 0)
    with pytest.raises(ValueError, match="end at"):
        sample_lift(m, CosineSchedule(), 1, [(999, 999), (0, 5)], progress=False)


def _manual_baseline(model, schedule, n, num_steps, seed, final_step):
    """The DDIM loop written out step by step, for the comparisons below."""
    from explore.nets.data import to_uint8
    from explore.nets.sampling import initial_noise

    ts = ddim_timesteps(num_steps)
    ab = schedule.alpha_bar.float()
    x = initial_noise((3, 16, 16), 0, n, seed)
    with torch.no_grad():
        for k, t in enumerate(ts[:-1]):
            x = ddim_step(x, model(x, torch.full((n,), t)), ab[t], ab[ts[k + 1]])
        last = x.clone()
        eps = model(x, torch.full((n,), 0))
        stepped = ddim_step(x, eps, ab[0], ab[0])  # the original's 0 -> 0
        x0 = ((x - (1 - ab[0]).sqrt() * eps) / ab[0].sqrt()).clamp(-1, 1)
    return to_uint8(last), last, stepped, to_uint8(x0)


def test_studys_last_step_returns_its_input_and_is_skipped():
    torch.manual_seed(0)
    m = Counting([8, 16], 16, 16).eval()
    s = CosineSchedule()
    imgs = sample_baseline(m, s, 4, num_steps=18, seed=2, batch_size=4, progress=False)
    assert m.calls == ddim_timesteps(18)[:-1]  # 18 calls: the 0 -> 0 call is not made
    want, last, stepped, _ = _manual_baseline(m, s, 4, 18, 2, "study")
    assert torch.equal(imgs, want)  # the images are the output of the step 55 -> 0
    # ... which is what the original's 19th call returns: a step 0 -> 0 is the identity
    assert torch.allclose(stepped, last, atol=1e-5)
    x, eps = torch.randn(64, 3, 8, 8) * 3, torch.randn(64, 3, 8, 8) * 5  # x0 clipping active
    ab = s.alpha_bar.float()
    for t in (0, 55, 500):
        assert torch.allclose(ddim_step(x, eps, ab[t], ab[t]), x, atol=1e-4)


def test_alpha_one_final_step_returns_the_clipped_x0_prediction():
    torch.manual_seed(0)
    m = Counting([8, 16], 16, 16).eval()
    s = CosineSchedule()
    imgs = sample_baseline(m, s, 4, num_steps=18, seed=2, batch_size=4, progress=False,
                           final_step="alpha_one")
    assert m.calls == ddim_timesteps(18)  # 19 calls
    _, _, _, x0 = _manual_baseline(m, s, 4, 18, 2, "alpha_one")
    assert (imgs.int() - x0.int()).abs().max() <= 1
    study = sample_baseline(m, s, 4, num_steps=18, seed=2, batch_size=4, progress=False)
    assert not torch.equal(imgs, study)
    with pytest.raises(ValueError, match="final_step='last'"):
        sample_baseline(m, s, 1, num_steps=4, progress=False, final_step="last")


def test_lift_final_step_on_every_path():
    seen = []

    class Spy(LiftUNet):
        def forward(self, x_hi, x_lo, t_hi, t_lo):
            seen.append((int(t_hi[0]), int(t_lo[0])))
            return super().forward(x_hi, x_lo, t_hi, t_lo)

    torch.manual_seed(0)
    m = Spy([8, 16], 16, 16).eval()
    path = [(999, 999), (900, 500), (600, 100), (200, 0), (0, 0)]
    a = sample_lift(m, CosineSchedule(), 2, path, seed=0, progress=False)
    assert seen == path[:-1]
    seen.clear()
    b = sample_lift(m, CosineSchedule(), 2, path, seed=0, progress=False, final_step="alpha_one")
    assert seen == path and not torch.equal(a, b)
