import math

import torch

from explore.diffusion import CosineSchedule, baseline_loss, lift_loss
from explore.models import BaselineUNet, LiftUNet


def test_cosine_schedule_matches_closed_form():
    s = CosineSchedule()
    T, off = 1000, 0.008
    f = lambda t: math.cos(((t / T) + off) / (1 + off) * math.pi / 2) ** 2  # noqa: E731
    # alpha_bar[t] = prod_{k<=t} (1 - beta_k) = f(t+1)/f(0) while no beta is clipped
    for t in (0, 10, 500, 900):
        assert abs(s.alpha_bar[t].item() - f(t + 1) / f(0)) < 1e-9
    assert s.betas.max().item() <= 0.999 + 1e-12
    assert torch.all(s.alpha_bar[1:] < s.alpha_bar[:-1])
    assert s.log_snr(0) > 9 and s.log_snr(999) < -15


def test_q_sample_mixes_signal_and_noise():
    s = CosineSchedule()
    x0, noise = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    t = torch.tensor([0, 999])
    xt = s.q_sample(x0, t, noise)
    ab = s.alpha_bar.float()
    assert torch.allclose(xt[0], torch.full((3, 4, 4), ab[0].sqrt().item()))
    assert torch.allclose(xt[1], torch.full((3, 4, 4), ab[999].sqrt().item()))


def test_losses_are_mse_of_noise():
    torch.manual_seed(0)
    s = CosineSchedule()
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    out = baseline_loss(BaselineUNet([8, 16], 16, 16), s, x0)
    assert out["loss"].ndim == 0 and out["loss"] > 0
    out = lift_loss(LiftUNet([8, 16], 16, 16), s, x0)
    assert torch.allclose(out["loss"], out["loss_64"] + out["loss_32"])


def test_lift_loss_draws_independent_timesteps_per_scale():
    seen = {}

    class Spy(LiftUNet):
        def forward(self, x_hi, x_lo, t_hi, t_lo):
            seen.update(t_hi=t_hi, t_lo=t_lo, x_lo=x_lo)
            return super().forward(x_hi, x_lo, t_hi, t_lo)

    g = torch.Generator().manual_seed(0)
    lift_loss(Spy([8, 16], 16, 16), CosineSchedule(), torch.zeros(32, 3, 16, 16), generator=g)
    assert not torch.equal(seen["t_hi"], seen["t_lo"])
    assert seen["x_lo"].shape == (32, 3, 8, 8)
