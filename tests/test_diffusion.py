import math

import pytest
import torch
from torch import nn

from explore.nets.diffusion import CosineSchedule, baseline_loss, lift_loss
from explore.nets.models import LiftUNet


def _clipped_cosine_float32(beta_min=1e-4, beta_max=0.02, T=1000, s=0.008):
    """The clip rule re-implemented here, the way an independent reader of STUDY.md would:
    torch.linspace in float32, closed-form cosine, betas clipped, cumprod in float32."""
    x = torch.linspace(0, T, T + 1)
    f = torch.cos(((x / T) + s) / (1 + s) * math.pi * 0.5) ** 2
    f = f / f[0]
    betas = torch.clip(1 - f[1:] / f[:-1], beta_min, beta_max)
    return torch.cumprod(1 - betas, dim=0)


def test_default_schedule_is_the_studys_clipped_cosine():
    s = CosineSchedule()
    assert s.name == "study" and s.alpha_bar.dtype == torch.float64
    # STUDY.md "Noise schedule" table: 1 - 1e-4 at t = 0 (beta_0 raised to the clip), then 3
    # significant digits
    assert abs(s.alpha_bar[0].item() - 0.9999) < 1e-7
    for t, want in ((990, 3.83e-3), (999, 3.19e-3)):
        assert float(f"{s.alpha_bar[t].item():.3g}") == want
    for t, log_snr in ((0, 9.21), (990, -5.56), (999, -5.74)):
        assert abs(s.log_snr(t).item() - log_snr) < 0.006
    ref = _clipped_cosine_float32()
    assert (s.alpha_bar - ref.double()).abs().max().item() < 1e-6
    # the clip is active at both ends: 13 betas raised to 1e-4, the noisy end capped at 0.02
    assert s.betas.min().item() == pytest.approx(1e-4)
    assert s.betas.max().item() == pytest.approx(0.02)
    assert int((s.betas >= 0.02 - 1e-9).sum()) == 98
    # another clip range is another schedule, with its own name
    other = CosineSchedule(beta_min=1e-4, beta_max=0.03)
    assert other.name == "cosine-clip0.0001-0.03"
    assert (other.alpha_bar - _clipped_cosine_float32(beta_max=0.03).double()).abs().max() < 1e-6
    assert CosineSchedule.named("study").alpha_bar.equal(s.alpha_bar)


def test_schedule_config_group_builds_both_presets():
    from explore.core.config import build, compose

    study = build(compose("train", ["diffusion=study"]).diffusion)
    cosine = build(compose("train", ["diffusion=cosine"]).diffusion)
    assert study.name == "study" and cosine.name == "cosine"
    assert build(compose("train").diffusion).name == "study"  # the default


def test_bad_schedule_values_are_named():
    from explore.core.errors import ConfigError

    with pytest.raises(ConfigError, match="beta_min"):
        CosineSchedule(beta_min=0.1, beta_max=0.02)
    with pytest.raises(ConfigError, match="unknown noise schedule 'linear'"):
        CosineSchedule.named("linear")
    with pytest.raises(ConfigError, match="precision"):
        CosineSchedule(precision="float16")


def test_unclipped_cosine_matches_closed_form_and_the_old_values():
    s = CosineSchedule.named("cosine")
    T, off = 1000, 0.008
    f = lambda t: math.cos(((t / T) + off) / (1 + off) * math.pi / 2) ** 2  # noqa: E731
    # alpha_bar[t] = prod_{k<=t} (1 - beta_k) = f(t+1)/f(0) while no beta is clipped
    for t in (0, 10, 500, 900):
        assert abs(s.alpha_bar[t].item() - f(t + 1) / f(0)) < 1e-9
    assert s.betas.max().item() <= 0.999 + 1e-12
    assert torch.all(s.alpha_bar[1:] < s.alpha_bar[:-1])
    assert s.log_snr(0) > 9 and s.log_snr(999) < -15
    # STUDY.md's "unclipped cosine" column
    assert abs(s.alpha_bar[0].item() - 0.99996) < 5e-6
    assert float(f"{s.alpha_bar[990].item():.3g}") == 1.97e-4
    assert float(f"{s.alpha_bar[999].item():.3g}") == 2.43e-9


def test_q_sample_mixes_signal_and_noise():
    s = CosineSchedule()
    x0, noise = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    t = torch.tensor([0, 999])
    xt = s.q_sample(x0, t, noise)
    ab = s.alpha_bar.float()
    assert torch.allclose(xt[0], torch.full((3, 4, 4), ab[0].sqrt().item()))
    assert torch.allclose(xt[1], torch.full((3, 4, 4), ab[999].sqrt().item()))


class _Constant(nn.Module):
    """A 'model' that records its inputs and predicts a constant eps, so the loss is known."""

    def __init__(self, lift: bool):
        super().__init__()
        self.lift, self.seen = lift, []

    def forward(self, *args):
        self.seen.append(args)
        xs = args[:2] if self.lift else args[:1]
        out = tuple(torch.full_like(x, 0.25) for x in xs)
        return out if self.lift else out[0]


def _noise_of(s, x_t, x0, t):
    """eps recovered from x_t = sqrt(ab) x0 + sqrt(1 - ab) eps."""
    ab = s.alpha_bar.float()[t].view(-1, 1, 1, 1)
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


def test_losses_are_mse_of_noise():
    s = CosineSchedule()
    x0 = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    model = _Constant(lift=False)
    out = baseline_loss(model, s, x0, generator=torch.Generator().manual_seed(0))
    x_t, t = model.seen[0]
    eps = _noise_of(s, x_t, x0, t)
    assert eps.std().item() == pytest.approx(1.0, abs=0.1)  # it is the drawn noise
    assert out["loss"].item() == pytest.approx(((0.25 - eps) ** 2).mean().item(), rel=1e-4)

    model = _Constant(lift=True)
    out = lift_loss(model, s, x0, generator=torch.Generator().manual_seed(0))
    x_hi, x_lo, t_hi, t_lo = model.seen[0]
    eps_hi = _noise_of(s, x_hi, x0, t_hi)
    eps_lo = _noise_of(s, x_lo, torch.nn.functional.interpolate(
        x0, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=False), t_lo)
    assert out["loss_64"].item() == pytest.approx(((0.25 - eps_hi) ** 2).mean().item(), rel=1e-4)
    assert out["loss_32"].item() == pytest.approx(((0.25 - eps_lo) ** 2).mean().item(), rel=1e-3)
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
