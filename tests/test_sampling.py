import pytest
import torch

from explore.diffusion import CosineSchedule
from explore.models import BaselineUNet, LiftUNet
from explore.sampling import ddim_step, ddim_timesteps, diagonal_path, sample_baseline, sample_lift


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
    assert m.calls == ddim_timesteps(18)


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
    assert seen[:5] == path
    assert diagonal_path(18)[0] == (990, 990) and diagonal_path(18)[-1] == (0, 0)
    with pytest.raises(ValueError, match="end at"):
        sample_lift(m, CosineSchedule(), 1, [(999, 999), (0, 5)], progress=False)
