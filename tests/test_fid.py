"""FID through the one path evaluation takes (explore.evaluation.features and .metrics): zero
for identical sets, ordering of distances, sensitivity to blur and noise, the real-stats cache,
offline Inception weights, extractor validation, the random extractor's determinism.

Everything uses the download-free ``randconv-256`` extractor on procedurally drawn shapes (sharp
edges, so blur and noise visibly change them); nothing here touches the network.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.metric_fid import fid_features_to_statistics
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from explore.evaluation import features as fid_mod
from explore.evaluation.extractors import (
    RANDCONV_DIM,
    RANDCONV_NAME,
    RandConvFeatures,
    randconv_features,
    random_conv_weights,
)
from explore.evaluation.features import (
    EXTRACTORS,
    INCEPTION_NAME,
    FidWeightsMissing,
    content_digest,
    feature_dim,
    min_stable_count,
    real_stats_name,
    real_stats_path,
    resolve_inception_weights,
)
from explore.evaluation.metrics import FeatureExtractor, RealSet, clamp_fid, fid_from_features

N = 300  # > 256 features, so covariances are full rank; small enough for 2 CPU cores
SIZE = 32


def compute_fid(fake: torch.Tensor, real: torch.Tensor, *, extractor: str = INCEPTION_NAME,
                real_cache_name: str | None = None, cache_root: Path | None = None,
                device: str = "cpu", batch_size: int = 64, progress: bool = True) -> float:
    """FID of `fake` against `real` the way evaluation computes it: the extractor built once
    (weights, device and name checked before any image), the real statistics (cached under
    `real_cache_name` when given, as evaluation's RealSet does), the generated features, and
    torch-fidelity's FID of them (clamped at 0)."""
    net = FeatureExtractor(extractor, device=device, batch_size=batch_size)
    fake_features = net(fake, progress=progress, desc="FID fake")
    if real_cache_name is None:
        stats = fid_features_to_statistics(net(real, progress=progress, desc="FID real"))
    else:
        stats = RealSet(net, real, real_cache_name, cache_root, progress=progress).stats
    return fid_from_features(fake_features, stats)


# ------------------------------------------------------------------------------------------------
# Procedural data


def draw_shapes(n: int, seed: int, size: int = SIZE, scale: float = 1.0) -> torch.Tensor:
    """n uint8 images: a dark flat background and 3 filled circles/rectangles of bright colours.

    `scale` shrinks the shapes: scale != 1 is a different distribution from the same generator.
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen)

    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = coords[:, None], coords[None, :]
    img = (rand(n, 3, 1, 1) * 0.5).expand(n, 3, size, size)
    for _ in range(3):
        cx, cy = rand(n, 1, 1) * size, rand(n, 1, 1) * size
        r = (0.1 + 0.2 * rand(n, 1, 1)) * size * scale
        circle = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
        rect = ((xx - cx).abs() < r) & ((yy - cy).abs() < 0.7 * r)
        mask = torch.where(rand(n, 1, 1) < 0.5, circle, rect)
        img = torch.where(mask[:, None], 0.3 + 0.7 * rand(n, 3, 1, 1), img)
    return (img * 255).round().clamp(0, 255).to(torch.uint8)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma == 0:
        return x
    k = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(x, [k, k], [sigma, sigma])


def add_noise(x: torch.Tensor, std: float, seed: int = 123) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noisy = x.float() + std * torch.randn(x.shape, generator=gen)
    return noisy.round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def real() -> torch.Tensor:
    return draw_shapes(N, seed=0)


@pytest.fixture(scope="module")
def fake() -> torch.Tensor:
    return draw_shapes(N, seed=1)


@pytest.fixture(scope="module")
def fid_vs_real(real, tmp_path_factory):
    """FID of a set against `real`, with real statistics cached once for the module and
    results memoised by content (the tests share some sets; the CPU time is scarce)."""
    cache_root = tmp_path_factory.mktemp("fid_cache")
    name = real_stats_name(f"shapes-{content_digest(real)}", SIZE, RANDCONV_NAME, N)
    memo: dict[str, float] = {}

    def fid(x: torch.Tensor) -> float:
        key = content_digest(x)
        if key not in memo:
            memo[key] = compute_fid(
                x,
                real,
                extractor=RANDCONV_NAME,
                real_cache_name=name,
                cache_root=cache_root,
                batch_size=N // 2,
                progress=False,
            )
        return memo[key]

    return fid


# ------------------------------------------------------------------------------------------------
# Values


def test_identical_sets_give_zero(real, fid_vs_real):
    feats = randconv_features(real, random_conv_weights()).numpy()
    scale = np.trace(np.cov(feats, rowvar=False))  # FID's natural scale: total feature variance
    value = fid_vs_real(real)
    assert 0.0 <= value < 1e-8 * scale


def test_same_distribution_is_much_closer_than_a_different_one(fid_vs_real, fake):
    same = fid_vs_real(fake)
    smaller_shapes = fid_vs_real(draw_shapes(N, seed=2, scale=0.4))
    gen = torch.Generator().manual_seed(3)
    uniform_noise = torch.randint(0, 256, (N, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    assert same > 0
    assert smaller_shapes > 10 * same
    assert fid_vs_real(uniform_noise) > 10 * smaller_shapes


def test_fid_rises_monotonically_with_blur(fid_vs_real, fake):
    values = [fid_vs_real(blur(fake, s)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values[:-1], values[1:], strict=True)), values
    assert values[-1] > 2 * values[0], values


def test_fid_rises_monotonically_with_noise(fid_vs_real, fake):
    values = [fid_vs_real(add_noise(fake, s)) for s in (0.0, 8.0, 16.0, 32.0)]
    assert all(a < b for a, b in zip(values[:-1], values[1:], strict=True)), values
    assert values[-1] > 2 * values[0], values


def test_negative_fid_is_clamped_and_only_large_negatives_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float-error negatives must stay silent
        assert clamp_fid(-1e-9) == 0.0
        assert clamp_fid(3.5) == 3.5
    with pytest.warns(UserWarning, match="negative"):
        assert clamp_fid(-0.5) == 0.0


def test_progress_bars_name_each_set(capsys):
    images = draw_shapes(8, seed=0, size=16)
    compute_fid(images, images, extractor=RANDCONV_NAME, progress=True)
    err = capsys.readouterr().err
    assert "FID fake" in err and "FID real" in err
    compute_fid(images, images, extractor=RANDCONV_NAME, progress=False)
    assert "FID" not in capsys.readouterr().err  # and torch-fidelity's own chatter is off


def test_blas_threads_are_limited_during_fid_and_restored():
    fns = fid_mod._numpy_openblas()
    if fns is None:
        pytest.skip("numpy is not built on a findable OpenBLAS")
    set_threads, get_threads = fns
    before = get_threads()
    with fid_mod.one_blas_thread():
        assert get_threads() == 1
    assert get_threads() == before


# ------------------------------------------------------------------------------------------------
# Real-statistics cache


def _fid(fake: torch.Tensor, real: torch.Tensor, name: str, root: Path) -> float:
    return compute_fid(
        fake, real, extractor=RANDCONV_NAME, real_cache_name=name, cache_root=root, progress=False
    )


def test_real_stats_cache_is_written_once_and_reused(tmp_path, real, fake):
    name = real_stats_name("shapes-seed0", SIZE, RANDCONV_NAME, N)
    stats = real_stats_path(name, RANDCONV_NAME, tmp_path)

    first = _fid(fake, real, name, tmp_path)
    assert stats.is_file()  # our path matches torch-fidelity's naming
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted([stats.name, f"{name}-{RANDCONV_NAME}-features-256.pt"])
    mtime = stats.stat().st_mtime_ns

    # Reuse: even *other* real images under the same name (here the fake set itself, which
    # uncached would give 0) get the cached answer: the name is the only key, which is why
    # real_stats_name exists.
    assert _fid(fake, fake, name, tmp_path) == first > 0
    assert stats.stat().st_mtime_ns == mtime
    # The fake set is never cached: still only the real entry's two files.
    assert sorted(p.name for p in tmp_path.iterdir()) == files


def test_real_stats_names_do_not_collide(tmp_path, real, fake):
    base = real_stats_name("shapes", 32, RANDCONV_NAME, 512)
    variants = {
        base,
        real_stats_name("shapes", 32, RANDCONV_NAME, 256),  # count
        real_stats_name("shapes", 64, RANDCONV_NAME, 512),  # resolution
        real_stats_name("shapes", 32, INCEPTION_NAME, 512),  # extractor
        real_stats_name("other", 32, RANDCONV_NAME, 512),  # dataset
        real_stats_name("data/afhq", 32, RANDCONV_NAME, 512),  # sanitised ...
        real_stats_name("data_afhq", 32, RANDCONV_NAME, 512),  # ... yet distinct
        real_stats_name("shapes", 32, INCEPTION_NAME, 512, "a.pth:sha256:1"),  # weights ...
        real_stats_name("shapes", 32, INCEPTION_NAME, 512, "b.pth:sha256:2"),  # ... of a file
    }
    assert len(variants) == 9
    assert real_stats_name("shapes", 32, RANDCONV_NAME, 512, "") == base  # caches made before
    for name in variants:
        assert all(c.isalnum() or c in "._+=-" for c in name), name

    # Entries that torch-fidelity alone would have confused (same dataset, other count or
    # resolution) live side by side and give their own values. (Counts stay above the feature
    # width: numpy's eigvals is ~50x slower on rank-deficient covariances.)
    fewer = real[:270]
    low = F.avg_pool2d(real.float(), 2).round().to(torch.uint8)
    sets = {
        real_stats_name("shapes-seed0", SIZE, RANDCONV_NAME, N): real,
        real_stats_name("shapes-seed0", SIZE, RANDCONV_NAME, len(fewer)): fewer,
        real_stats_name("shapes-seed0", SIZE // 2, RANDCONV_NAME, N): low,
    }
    values = [_fid(fake, images, name, tmp_path) for name, images in sets.items()]
    assert len(set(values)) == 3
    assert len(list(tmp_path.glob("*-stat-fid-*.pt"))) == 3
    # And an entry answers with its own statistics from the cache (whatever images come along).
    assert _fid(fake, real, list(sets)[1], tmp_path) == values[1]


# ------------------------------------------------------------------------------------------------
# Inception weights, offline


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """torch hub and the package cache pointed at empty folders, and the package index
    unreachable (a fetch fails at once, as on a node without internet), so the test never
    downloads, even on a machine with network access. Yields (hub checkpoints, fetches tried)."""
    from explore.core.packages import PackagedFile, PackagedFileError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("EMA_STUDY_CACHE", str(tmp_path / "cache"))
    fetches: list[str] = []

    def offline(self):
        fetches.append(self.key)
        raise PackagedFileError(self.missing_message("the package index cannot be reached"))

    monkeypatch.setattr(PackagedFile, "fetch", offline)
    return tmp_path / "torch" / "hub" / "checkpoints", fetches


def test_missing_inception_weights_raise_before_any_work(empty_torch_home):
    checkpoints, fetches = empty_torch_home
    images = draw_shapes(8, seed=0, size=16)
    start = time.perf_counter()
    with pytest.raises(FidWeightsMissing) as err:
        compute_fid(images, images, extractor=INCEPTION_NAME, progress=False)
    assert time.perf_counter() - start < 2.0
    assert isinstance(err.value, RuntimeError)
    message = str(err.value)
    filename = URL_INCEPTION_V3.rsplit("/", 1)[1]
    assert "python -m explore.fetch inception" in message  # how to get it from the index
    assert URL_INCEPTION_V3 in message  # or what to download by hand
    assert str(checkpoints / filename) in message  # where to put it, on this machine
    assert "eval.fid.weights_path=" in message  # or how to pass it
    assert RANDCONV_NAME in message  # the offline alternative
    assert fetches == ["inception"]  # the package index was asked once; GitHub never


def test_inception_weights_resolution(empty_torch_home, tmp_path):
    checkpoints, fetches = empty_torch_home
    with pytest.raises(FidWeightsMissing, match="does not exist"):
        resolve_inception_weights(tmp_path / "nope.pth")
    given = tmp_path / "mine.pth"
    given.write_bytes(b"x")
    assert resolve_inception_weights(given) == str(given)
    assert fid_mod.weights_id(INCEPTION_NAME, str(given)) == \
        "mine.pth:sha256:2d711642b726"  # sha256(b"x"): every row names the weights it used
    # A file already in torch hub's cache is used without asking anyone.
    checkpoints.mkdir(parents=True)
    cached = checkpoints / URL_INCEPTION_V3.rsplit("/", 1)[1]
    cached.write_bytes(b"x")
    assert resolve_inception_weights(None) == str(cached)
    assert fetches == []
    assert fid_mod.weights_id(RANDCONV_NAME, None) == ""  # no weights file: nothing to name


# ------------------------------------------------------------------------------------------------
# Extractor names and validation


def test_extractor_facts():
    assert EXTRACTORS == {INCEPTION_NAME: 2048, RANDCONV_NAME: 256}
    assert feature_dim(INCEPTION_NAME) == min_stable_count(INCEPTION_NAME) == 2048
    assert feature_dim(RANDCONV_NAME) == RANDCONV_DIM == 256
    assert FEATURE_EXTRACTORS_REGISTRY[RANDCONV_NAME] is RandConvFeatures
    assert "inception" not in RANDCONV_NAME


def test_unknown_extractor_is_rejected_with_the_valid_names():
    images = draw_shapes(4, seed=0, size=16)
    for call in (
        lambda: compute_fid(images, images, extractor="inception"),
        lambda: feature_dim("inception"),
        lambda: real_stats_name("x", 32, "inception", 10),
    ):
        with pytest.raises(ValueError) as err:
            call()
        assert INCEPTION_NAME in str(err.value) and RANDCONV_NAME in str(err.value)


def test_bad_inputs_and_devices_are_rejected():
    images = draw_shapes(4, seed=0, size=16)
    with pytest.raises(TypeError, match="uint8"):
        compute_fid(images.float(), images, extractor=RANDCONV_NAME)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        compute_fid(images[:, :1], images, extractor=RANDCONV_NAME)
    with pytest.raises(ValueError, match="cpu"):
        compute_fid(images, images, extractor=RANDCONV_NAME, device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            compute_fid(images, images, extractor=RANDCONV_NAME, device="cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(real, fake):
    cpu = compute_fid(fake, real, extractor=RANDCONV_NAME, progress=False)
    last = f"cuda:{torch.cuda.device_count() - 1}"
    before = torch.cuda.current_device()
    gpu = compute_fid(fake, real, extractor=RANDCONV_NAME, device=last, progress=False)
    assert gpu == pytest.approx(cpu, rel=1e-3)
    assert torch.cuda.current_device() == before  # the device switch is undone


# ------------------------------------------------------------------------------------------------
# The random extractor


def test_randconv_is_deterministic_and_leaves_global_rng_alone():
    rng = torch.get_rng_state()
    a = RandConvFeatures(RANDCONV_NAME, ["256"])
    b = RandConvFeatures(RANDCONV_NAME, ["256"])
    assert torch.equal(torch.get_rng_state(), rng)
    for wa, wb in zip(a.stage_weights(), b.stage_weights(), strict=True):
        assert torch.equal(wa, wb)
    x = draw_shapes(32, seed=5)
    (fa,), (fb,) = a(x), b(x)
    assert fa.shape == (32, 256) and fa.dtype == torch.float64
    assert torch.equal(fa, fb)


def test_randconv_weights_fingerprint_is_pinned():
    # Recorded once. If this fails, torch's CPU generator or the design changed, so every number
    # made with randconv-256 so far is incomparable: change RANDCONV_NAME, then these constants.
    sums = [float(w.double().abs().sum()) for w in random_conv_weights()]
    assert sums == pytest.approx([89.887789, 427.679881, 1243.881576, 2595.280499], rel=1e-6)
    first = [float(w.flatten()[0]) for w in random_conv_weights()]
    assert first == pytest.approx([0.146966025, -0.190913096, 0.038095061, -0.018916748], rel=1e-6)


@pytest.mark.parametrize("size", [16, 48, 64, 80])
def test_randconv_accepts_any_size(size):
    x = draw_shapes(4, seed=0, size=size)
    (feats,) = RandConvFeatures(RANDCONV_NAME, ["256"])(x)
    assert feats.shape == (4, RANDCONV_DIM) and torch.isfinite(feats).all()
