"""Error heatmap: exact values on a linear model, batched == naive, invariances, I/O, figure."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.hotpath.naive import naive_error_heatmap
from explore.lift import heatmap as hm_mod
from explore.lift import heatmap_jvp as jvp_mod
from explore.lift.dp_path import grid_diagonal, grid_timesteps, optimal_path
from explore.lift.heatmap import Heatmap, HeatmapFileError, error_heatmap, gamma_snr, pick_images
from explore.lift.heatmap_plot import plot_heatmap
from explore.nets.diffusion import CosineSchedule
from explore.nets.models import LiftUNet

GRID, PROBES, SEED = 4, 2, 3


@pytest.fixture(scope="module")
def schedule() -> CosineSchedule:
    return CosineSchedule()


@pytest.fixture(scope="module")
def tiny_model() -> LiftUNet:
    torch.manual_seed(0)
    return LiftUNet(hidden_dims=[8, 16], image_size=16, attn_min_ch=16).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    data = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(1))
    return pick_images(data, count=2, seed=0)


def _run(model, schedule, images, **kw) -> Heatmap:
    args = dict(grid_size=GRID, num_probes=PROBES, seed=SEED, progress=False)
    # module fixtures run before conftest's per-test one-thread fixture: pin it here too
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return error_heatmap(model, schedule, images, **{**args, **kw})
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batched(tiny_model, schedule, images) -> Heatmap:
    return _run(tiny_model, schedule, images)


class LinearLift(nn.Module):
    """eps_hi = a(t_hi) x_hi + 5 up(x_lo), eps_lo = c(t_lo) x_lo + 7 down(x_hi).

    J_64 = a I and J_32 = c I exactly, and the cross terms must not leak into either estimate.
    """

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    @staticmethod
    def a(t: torch.Tensor) -> torch.Tensor:
        return 2.0 + t.float() / 1000

    @staticmethod
    def c(t: torch.Tensor) -> torch.Tensor:
        return 3.0 - t.float() / 1000

    def forward(self, x_hi, x_lo, t_hi, t_lo):
        up = F.interpolate(x_lo, size=x_hi.shape[-2:], mode="bilinear", align_corners=False)
        eps_hi = self.scale * self.a(t_hi)[:, None, None, None] * x_hi + 5 * up
        eps_lo = self.c(t_lo)[:, None, None, None] * x_lo + 7 * F.avg_pool2d(x_hi, 2)
        return eps_hi, eps_lo


@pytest.mark.parametrize("impl", ["batched", "naive"])
def test_exact_values_on_a_linear_model(impl, schedule):
    """Literal STUDY.md estimate: v^2 ||J||_F^2 * gamma = a^2 * C * H*W * v^2 * gamma, exactly.

    Rademacher probes have u^2 = 1, so there is no sampling noise: the test pins the sqrt(v) and
    the extra v, the chain-rule factor at each scale's own timestep, and the separation of scales.
    """
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    kw = dict(grid_size=5, num_probes=3, seed=0, progress=False)
    if impl == "batched":
        hm = error_heatmap(LinearLift(), schedule, x, cells_per_forward=4, **kw)
    else:
        hm = naive_error_heatmap(LinearLift(), schedule, x, **kw)
    ts = torch.as_tensor(grid_timesteps(5))
    gamma = gamma_snr(schedule, ts.numpy())
    v_hi, v_lo = 1 / 64, 1 / 16
    want_64 = (LinearLift.a(ts).double() ** 2 * 3 * 64 * v_hi**2).numpy() * gamma
    want_32 = (LinearLift.c(ts).double() ** 2 * 3 * 16 * v_lo**2).numpy() * gamma
    np.testing.assert_allclose(hm.error_64, np.repeat(want_64[:, None], 5, axis=1), rtol=1e-5)
    np.testing.assert_allclose(hm.error_32, np.repeat(want_32[None, :], 5, axis=0), rtol=1e-5)


def test_shape_metadata_and_values(batched, schedule, images):
    ts = grid_timesteps(GRID)
    assert np.array_equal(batched.timesteps, ts)
    np.testing.assert_allclose(batched.log_snr, schedule.log_snr(torch.as_tensor(ts)).numpy())
    for e in (batched.error_64, batched.error_32, batched.error_total):
        assert e.shape == (GRID, GRID) and e.dtype == np.float64
        assert np.all(np.isfinite(e)) and np.all(e > 0)
    np.testing.assert_array_equal(batched.error_total, batched.error_64 + batched.error_32)
    assert (batched.grid_size, batched.num_probes, batched.seed, batched.num_images) == (
        GRID, PROBES, SEED, images.shape[0])
    # gamma spans ~17 decades from t=999 to t=0: the noisy corner dominates
    assert batched.error_64[0, 0] > 1e6 * batched.error_64[-1, -1]


def test_batched_equals_naive(batched, tiny_model, schedule, images):
    naive = naive_error_heatmap(tiny_model, schedule, images, grid_size=GRID,
                                num_probes=PROBES, seed=SEED)
    np.testing.assert_allclose(batched.error_64, naive.error_64, rtol=1e-4)
    np.testing.assert_allclose(batched.error_32, naive.error_32, rtol=1e-4)


def test_cells_per_forward_invariance(batched, tiny_model, schedule, images):
    for cpf in (1, 3):  # 3 does not divide 16 cells: a ragged last chunk
        other = _run(tiny_model, schedule, images, cells_per_forward=cpf)
        np.testing.assert_allclose(other.error_64, batched.error_64, rtol=1e-5)
        np.testing.assert_allclose(other.error_32, batched.error_32, rtol=1e-5)


def test_deterministic_and_seed_dependent(batched, tiny_model, schedule, images):
    torch.manual_seed(123)  # the global RNG must not matter
    again = _run(tiny_model, schedule, images)
    np.testing.assert_array_equal(again.error_64, batched.error_64)
    np.testing.assert_array_equal(again.error_32, batched.error_32)
    other = _run(tiny_model, schedule, images, seed=SEED + 1)
    assert not np.allclose(other.error_64, batched.error_64, rtol=1e-3)


def test_autograd_state_and_training_flag(batched, tiny_model, schedule, images):
    tiny_model.train()
    try:
        with torch.enable_grad():
            a = _run(tiny_model, schedule, images, cells_per_forward=16)
        assert tiny_model.training  # restored
        with torch.inference_mode():
            b = _run(tiny_model, schedule, images, cells_per_forward=16)
    finally:
        tiny_model.eval()
    for h in (a, b):
        np.testing.assert_allclose(h.error_64, batched.error_64, rtol=1e-5)
        np.testing.assert_allclose(h.error_32, batched.error_32, rtol=1e-5)
    assert all(p.grad is None for p in tiny_model.parameters())


def test_save_load_round_trip(batched, tmp_path):
    path = tmp_path / "sub" / "heatmap_e200"  # no suffix: written exactly there
    batched.save(path)
    assert sorted(os.listdir(path.parent)) == ["heatmap_e200"]  # no temp file left
    back = Heatmap.load(path)
    for name in ("timesteps", "log_snr", "error_64", "error_32"):
        np.testing.assert_array_equal(getattr(back, name), getattr(batched, name))
    assert (back.grid_size, back.num_probes, back.seed, back.num_images) == (
        batched.grid_size, batched.num_probes, batched.seed, batched.num_images)
    assert isinstance(back.grid_size, int)


def test_load_corrupt_files_name_the_file(batched, tmp_path):
    good = tmp_path / "good.npz"
    batched.save(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a heatmap at all")
    missing_key = tmp_path / "missing.npz"
    np.savez(missing_key, error_64=np.zeros((2, 2)))
    for bad in (truncated, garbage, missing_key):
        with pytest.raises(HeatmapFileError, match=bad.name):
            Heatmap.load(bad)
    with pytest.raises(FileNotFoundError):
        Heatmap.load(tmp_path / "absent.npz")


def test_save_crash_keeps_old_file(batched, tmp_path, monkeypatch):
    path = tmp_path / "hm.npz"
    batched.save(path)
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"PK partial")
        raise RuntimeError("simulated crash mid-write")

    monkeypatch.setattr(hm_mod.np, "savez", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        batched.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["hm.npz"]


def test_plot_writes_png(batched, tmp_path):
    zeros = np.zeros_like(batched.error_32)
    paths = {
        "diagonal": grid_diagonal(GRID, 3),
        "DP-64": optimal_path(batched.error_64, zeros, batched.log_snr, 3, 2)[0],
        "DP-Total": optimal_path(batched.error_64, batched.error_32, batched.log_snr, 3, 2)[0],
    }
    out = tmp_path / "fig" / "heatmap.png"
    plot_heatmap(batched, paths, out, title="tiny")
    raw = out.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 20_000
    assert os.listdir(out.parent) == ["heatmap.png"]


def test_pick_images():
    data = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))
    a = pick_images(data, count=5, seed=4)
    assert a.shape == (5, 3, 8, 8) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, pick_images(data, count=5, seed=4))
    assert not torch.equal(a, pick_images(data, count=5, seed=5))
    rows = {tuple(r.flatten().tolist()) for r in a}
    assert len(rows) == 5  # distinct images
    every = {tuple((d.float() / 127.5 - 1).flatten().tolist()) for d in data}
    assert rows <= every
    nhwc = pick_images(data.permute(0, 2, 3, 1).numpy(), count=5, seed=4)
    assert torch.equal(nhwc, a)
    assert pick_images(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), 1).eq(1).all()
    with pytest.raises(ValueError):
        pick_images(data, count=21)
    with pytest.raises(ValueError):
        pick_images(data.float(), count=2)


def test_bad_arguments(tiny_model, schedule, images):
    with pytest.raises(ValueError):
        error_heatmap(tiny_model, schedule, images[:, :, :, :15], grid_size=2, progress=False)
    with pytest.raises(ValueError):
        error_heatmap(tiny_model, schedule, images, grid_size=2, cells_per_forward=0,
                      progress=False)


def test_corrupt_zip_is_a_heatmap_error_not_zipfile(tmp_path):
    path = tmp_path / "x.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("format.npy", b"\x93NUMPY broken")
    with pytest.raises(HeatmapFileError, match="x.npz"):
        Heatmap.load(path)


# -- the written-out forward-mode pass for LiftUNet (explore.lift.heatmap_jvp.tangents_lift_unet)


def _chunk(model, schedule, images, cells=((0, 0), (3, 1)), probes=2):
    x_lo = F.interpolate(images, scale_factor=0.5, mode="bilinear", align_corners=False)
    return hm_mod._chunk_inputs(schedule, images, x_lo, grid_timesteps(GRID), list(cells), SEED,
                                probes)


@pytest.mark.parametrize("attn_min_ch", [8, 16])  # attention at every level / bottleneck only
def test_written_out_jvp_equals_torch_func(schedule, images, attn_min_ch):
    torch.manual_seed(1)
    model = LiftUNet(hidden_dims=[8, 16], image_size=16, attn_min_ch=attn_min_ch).eval()
    assert jvp_mod.fast_path_supported(model)
    inputs = _chunk(model, schedule, images)
    with hm_mod.inference_context(model):
        want = hm_mod._tangents_functorch(model, *inputs)
        got_hi, got_lo, (eps_hi, eps_lo) = jvp_mod.tangents_lift_unet(model, *inputs,
                                                                      return_primal=True)
        ref_hi, ref_lo = model(*inputs[:4])
    for got, ref in ((got_hi, want[0]), (got_lo, want[1]), (eps_hi, ref_hi), (eps_lo, ref_lo)):
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))


def test_written_out_jvp_only_for_models_it_mirrors(tiny_model):
    class Changed(LiftUNet):
        def forward(self, x_hi, x_lo, t_hi, t_lo):
            eps_hi, eps_lo = super().forward(x_hi, x_lo, t_hi, t_lo)
            return 2 * eps_hi, eps_lo

    assert jvp_mod.fast_path_supported(tiny_model)
    assert not jvp_mod.fast_path_supported(Changed([8, 16], 16, 16))
    assert not jvp_mod.fast_path_supported(LinearLift())
    odd = LiftUNet([8, 16], 16, 16)
    odd.final_conv[1] = nn.GELU()
    assert not jvp_mod.fast_path_supported(odd)


def test_mismatching_fast_path_falls_back_to_torch_func(batched, tiny_model, schedule, images,
                                                       monkeypatch, caplog):
    real = jvp_mod.tangents_lift_unet

    def wrong(*args, **kw):  # as if explore.nets.models had changed under the written-out pass
        out = real(*args, **kw)
        return (2 * out[0], *out[1:])

    monkeypatch.setattr(jvp_mod, "tangents_lift_unet", wrong)
    with caplog.at_level("WARNING", logger="explore.lift.heatmap_jvp"):
        again = _run(tiny_model, schedule, images)
    assert "does not match" in caplog.text
    np.testing.assert_allclose(again.error_64, batched.error_64, rtol=1e-5)
    np.testing.assert_allclose(again.error_32, batched.error_32, rtol=1e-5)


def test_gamma_and_dp_log_snr_grid_follow_the_schedule(tiny_model, images):
    """The heatmap's chain-rule factor and the DP's log-SNR grid come from the run's schedule:
    at t = 999 the study's gamma is ~311 (log-SNR -5.74), the unclipped cosine's ~4e8 (-19.8)."""
    study, cosine = CosineSchedule.named("study"), CosineSchedule.named("cosine")
    g_study, g_cos = gamma_snr(study, np.array([999, 0])), gamma_snr(cosine, np.array([999, 0]))
    assert g_study[0] == pytest.approx(311, rel=0.01) and g_cos[0] == pytest.approx(4.1e8, rel=0.05)
    a = error_heatmap(tiny_model, study, images, grid_size=4, num_probes=1, seed=0,
                      progress=False)
    b = error_heatmap(tiny_model, cosine, images, grid_size=4, num_probes=1, seed=0,
                      progress=False)
    assert a.log_snr[0] == pytest.approx(-5.74, abs=0.01)
    assert b.log_snr[0] == pytest.approx(-19.84, abs=0.01)
    assert not np.allclose(a.error_64, b.error_64)
