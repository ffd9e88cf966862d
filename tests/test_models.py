import pytest
import torch
from hydra.utils import instantiate

from explore.config import compose
from explore.models import BaselineUNet, LiftUNet, count_parameters, downsample


@pytest.mark.parametrize("name, params", [("baseline", 58_274_627), ("lift", 58_475_206)])
def test_reference_parameter_count(name, params):
    # STUDY.md: about 58.3M (Baseline) and 58.5M (LIFT) at hidden dims [64, 128, 256, 512]
    model = instantiate(compose("train", [f"model={name}"]).model)
    assert count_parameters(model) == params


def test_reference_output_shapes():
    x = torch.randn(2, 3, 64, 64)
    t = torch.tensor([0, 999])
    with torch.no_grad():
        assert BaselineUNet()(x, t).shape == (2, 3, 64, 64)
        eps_hi, eps_lo = LiftUNet()(x, downsample(x), t, t.flip(0))
    assert eps_hi.shape == (2, 3, 64, 64) and eps_lo.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("name", ["baseline", "lift"])
def test_smoke_size_output_shapes(name):
    cfg = compose("train", [f"model={name}", "experiment=smoke"])
    model = instantiate(cfg.model)
    s = cfg.model.image_size
    x = torch.randn(3, 3, s, s)
    t = torch.randint(0, 1000, (3,))
    with torch.no_grad():
        if name == "baseline":
            assert model(x, t).shape == x.shape
        else:
            hi, lo = model(x, downsample(x), t, t)
            assert hi.shape == x.shape and lo.shape == (3, 3, s // 2, s // 2)


def test_lift_uses_both_timesteps():
    torch.manual_seed(0)
    model = LiftUNet([8, 16], 16, 16).eval()
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([10, 10])
    with torch.no_grad():
        a = model(x, downsample(x), t, t)[0]
        b = model(x, downsample(x), t, t + 500)[0]
    assert not torch.allclose(a, b)


def test_attention_threshold_is_configurable():
    with_attn = BaselineUNet([8, 16], 16, attn_min_ch=16)
    without = BaselineUNet([8, 16], 16, attn_min_ch=1024)
    assert count_parameters(with_attn) > count_parameters(without)


@pytest.mark.parametrize("kwargs, match", [
    (dict(hidden_dims=[8, 16], image_size=18), "divisible by 4"),
    (dict(hidden_dims=[12, 16], image_size=16), "GroupNorm"),
])
def test_bad_sizes_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BaselineUNet(**kwargs)


def test_lift_needs_half_scale_divisible():
    with pytest.raises(ValueError, match="low scale"):
        LiftUNet([8, 16], image_size=20)
