import pytest
import torch
from hydra.utils import instantiate

from explore.core.config import compose
from explore.nets.models import BaselineUNet, LiftUNet, count_parameters, downsample


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


def test_state_dict_names_are_the_original_studys():
    # names of the original study's LIFTDualTimestepModel / BaselineModel state_dicts, so its
    # checkpoints (model_state and EMA shadow) load by name
    lift = set(LiftUNet().state_dict())
    for name in ["time_mlp.1.weight", "time_mlp.3.bias", "time_combine.0.weight",
                 "time_combine.2.bias", "init_conv.weight", "encoder_blocks.0.0.norm1.weight",
                 "encoder_blocks.1.2.qkv.weight", "encoder_blocks.3.1.time_mlp.weight",
                 "downsample.3.weight", "bottleneck.1.proj.bias", "bottleneck.2.conv2.weight",
                 "upsample.0.weight", "decoder_blocks.0.0.shortcut.weight",
                 "decoder_blocks.3.1.conv1.weight", "final_conv.0.weight", "final_conv.2.bias"]:
        assert name in lift, name
    assert "encoder_blocks.0.2.qkv.weight" not in lift  # no attention at 64 channels
    base = set(BaselineUNet().state_dict())
    assert base == lift - {k for k in lift if k.startswith("time_combine.")}
