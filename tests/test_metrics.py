"""Metrics from one feature extraction (explore/evaluation/metrics.py): FID exactly
torch-fidelity's, KID,
precision/recall (Kynkäänniemi et al. 2019), bootstrap replicates, the real-set cache, kept
features. Feature-level tests use Gaussian features (fast); image-level ones randconv-256 on
procedurally drawn shapes (tests/test_fid.py's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_fid import add_noise, draw_shapes, empty_torch_home  # noqa: F401 (a fixture)

from explore.evaluation import metrics as M
from explore.evaluation.extractors import RANDCONV_NAME
from explore.evaluation.features import real_stats_name, real_stats_path
from explore.run.results import METRIC_COLUMNS

N = 300


def gaussian(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def test_fid_from_one_extraction_is_torch_fidelitys_bit_for_bit(tmp_path):
    """The evaluation's FID (features once, then torch-fidelity's statistics and distance) is
    the number torch-fidelity's own calculate_metrics gives, to the last bit, and the real
    set's cache is the same two files."""
    import torch_fidelity

    from explore.evaluation.features import UInt8Images, one_blas_thread

    real, fake = draw_shapes(N, seed=0), draw_shapes(N, seed=1)
    name = real_stats_name("shapes-s0", 32, RANDCONV_NAME, N)
    with one_blas_thread():  # as evaluation computes it: the eigenvalues bit for bit
        reference = torch_fidelity.calculate_metrics(
            input1=UInt8Images(fake), input2=UInt8Images(real), fid=True,
            feature_extractor=RANDCONV_NAME, cuda=False, batch_size=64, cache=True,
            cache_root=str(tmp_path / "a"), input2_cache_name=name, save_cpu_ram=True,
            verbose=False)[torch_fidelity.KEY_METRIC_FID]
    extractor = M.FeatureExtractor(RANDCONV_NAME, batch_size=64)
    real_set = M.RealSet(extractor, real, name, tmp_path / "b")
    assert M.fid_from_features(extractor(fake), real_set.stats) == reference
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        p.name for p in (tmp_path / "b").iterdir())
    assert real_stats_path(name, RANDCONV_NAME, tmp_path / "b").is_file()
    # an existing cache (here calculate_metrics') is read: other images under the same name are
    # never looked at, so the answer is the cached set's
    cached = M.RealSet(extractor, fake, name, tmp_path / "a")
    assert M.fid_from_features(extractor(fake), cached.stats) == reference
    assert torch.equal(cached.features, real_set.features)


def test_real_statistics_alone_do_not_extract_features(tmp_path, monkeypatch):
    real = draw_shapes(64, seed=0, size=16)
    extractor = M.FeatureExtractor(RANDCONV_NAME)
    name = real_stats_name("shapes-small", 16, RANDCONV_NAME, 64)
    M.RealSet(extractor, real, name, tmp_path).stats  # noqa: B018 - fills the cache
    calls = []
    monkeypatch.setattr(M, "extract_featuresdict_from_input_id_cached",
                        lambda *a, **k: calls.append(1))
    again = M.RealSet(extractor, real, name, tmp_path)
    assert set(again.stats) == {"mu", "sigma"} and calls == []


def test_kid_of_identical_sets_is_about_zero_and_grows_with_noise():
    # the unbiased MMD^2 of a set with itself is slightly negative: -2 (mean k(x, x) - mean
    # k(x, y)) / N, an O(1/N) term small against what noise adds
    x = gaussian(400, 32, seed=0)
    noise = gaussian(400, 32, seed=1)
    kid = [M.kid_from_features(x + s * noise, x)[0] for s in (0.0, 0.5, 1.0, 2.0)]
    assert abs(kid[0]) < 0.05 * kid[-1]
    assert all(a < b for a, b in zip(kid, kid[1:])), kid
    # images: randconv-256 features of drawn shapes, and of another draw with pixel noise
    extractor = M.FeatureExtractor(RANDCONV_NAME)
    real, fake = extractor(draw_shapes(N, seed=0)), draw_shapes(N, seed=1)
    noisy = [M.kid_from_features(extractor(add_noise(fake, s)), real)[0] for s in (8, 16, 32)]
    assert abs(M.kid_from_features(real, real)[0]) < 0.02 * noisy[-1]
    assert abs(M.kid_from_features(extractor(fake), real)[0]) < 0.1 * noisy[-1]
    assert all(a < b for a, b in zip(noisy, noisy[1:])), noisy


def test_kid_subsets_are_capped_at_the_sample_count():
    x, y = gaussian(300, 16, seed=0), gaussian(300, 16, seed=1, shift=0.3)
    mean, std = M.kid_from_features(x, y)  # torch-fidelity alone refuses 1000 > 300
    assert mean > 0 and std == 0.0  # one subset: the whole set
    many = M.kid_from_features(x, y, subsets=100, subset_size=100)
    assert many[1] > 0 and many[0] == pytest.approx(mean, rel=0.5)
    uneven = M.kid_from_features(x[:200], y)  # 200 of each per subset: 100 differ
    assert uneven[1] > 0


def knn_precision_recall(fake: np.ndarray, real: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019, written out: a sample is in a set's manifold when it is within
    the k-th-nearest-neighbour radius of at least one of its members."""
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def inside(points, members):
        d = np.linalg.norm(points[:, None] - members[None], axis=-1)
        return (d <= radii(members)[None]).any(axis=1).mean()

    return float(inside(fake, real)), float(inside(real, fake))


def test_precision_recall_is_the_knn_manifold_estimate():
    fake, real = gaussian(150, 8, seed=0, shift=0.3), gaussian(170, 8, seed=1)
    # torch-fidelity averages in float32
    assert M.precision_recall(fake, real) == pytest.approx(
        knn_precision_recall(fake.numpy(), real.numpy()), abs=1e-6)


def test_precision_recall_identical_near_one_disjoint_near_zero():
    x = gaussian(400, 8, seed=0)
    assert M.precision_recall(x, x) == (1.0, 1.0)
    p, r = M.precision_recall(gaussian(400, 8, seed=1), x)  # same distribution
    assert p > 0.85 and r > 0.85
    assert M.precision_recall(gaussian(400, 8, seed=1, shift=50.0), x) == (0.0, 0.0)
    # fidelity vs diversity: generated images from one of two real clusters are all
    # realistic (precision ~1) but cover half of the real images (recall ~0.5)
    two = torch.cat([gaussian(200, 8, seed=2), gaussian(200, 8, seed=3, shift=20.0)])
    p, r = M.precision_recall(gaussian(400, 8, seed=4), two)
    assert p > 0.75 and 0.4 < r < 0.6


def test_measure_fills_the_columns_each_metric_names(tmp_path):
    real, fake = draw_shapes(N, seed=0), add_noise(draw_shapes(N, seed=1), 16)
    extractor = M.FeatureExtractor(RANDCONV_NAME)
    real_set = M.RealSet(extractor, real, real_stats_name("m", 32, RANDCONV_NAME, N), tmp_path)
    feats = extractor(fake)
    for metrics in (["fid"], ["kid"], ["prc"], ["fid", "kid", "prc"]):
        got = M.measure(feats, real_set, metrics)
        assert set(got) == {c for m in metrics for c in METRIC_COLUMNS[m]}
    assert 0 <= got["precision"] <= 1 and 0 <= got["recall"] <= 1 and got["kid"] > 0
    with pytest.raises(ValueError, match="valid: fid, kid, prc"):
        M.check_metrics(["fid", "is"])


def _stats(x: torch.Tensor) -> dict:
    return {"mu": x.mean(0).numpy(), "sigma": np.cov(x.numpy(), rowvar=False)}


def test_bootstrap_replicates_are_fids_of_resampled_features():
    real, fake = gaussian(300, 16, seed=0), gaussian(300, 16, seed=1, shift=0.2)
    boot = M.FidBootstrap(_stats(real))
    identity = torch.arange(300)[None]
    assert boot.replicates(fake, identity)[0] == pytest.approx(
        M.fid_from_features(fake, _stats(real)), rel=1e-9)
    idx = M.bootstrap_indices(300, 5, boot_seed=0, sample_seed=42)
    reps = boot.replicates(fake, idx)
    for b in range(5):
        assert reps[b] == pytest.approx(M.fid_from_features(fake[idx[b]], _stats(real)),
                                        rel=1e-9)
    assert reps.std() > 0


def test_bootstrap_indices_depend_on_the_seeds_and_count_only():
    a = M.bootstrap_indices(50, 4, boot_seed=0, sample_seed=42)
    assert torch.equal(a, M.bootstrap_indices(50, 4, boot_seed=0, sample_seed=42))
    assert not torch.equal(a, M.bootstrap_indices(50, 4, boot_seed=0, sample_seed=43))
    assert not torch.equal(a, M.bootstrap_indices(50, 4, boot_seed=1, sample_seed=42))
    assert a.shape == (4, 50) and int(a.min()) >= 0 and int(a.max()) < 50


def test_kept_features_round_trip_as_float16(tmp_path, caplog):
    feats = gaussian(10, 4, seed=0)
    key = {"epoch": 2, "weights": "ema", "sample_seed": 0}
    path = M.save_features(tmp_path / "f.npz", feats, key)
    back = M.load_features(path, key)
    assert back.dtype == torch.float64
    assert torch.allclose(back, feats, rtol=1e-3, atol=1e-3)
    assert M.load_features(path, {**key, "sample_seed": 1}) is None
    assert "another row" in caplog.text
    assert M.load_features(tmp_path / "none.npz", key) is None


def test_one_feature_layer_serves_every_metric_of_every_extractor():
    """Inception and randconv-256 name the same layer for FID, KID and PRC: one extraction per
    row serves all three (torch-fidelity's PRC defaults to a VGG-16 only without an extractor)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from explore.evaluation.features import EXTRACTORS

    for name in EXTRACTORS:
        cls = FEATURE_EXTRACTORS_REGISTRY[name]
        assert {cls.get_default_feature_layer_for_metric(m) for m in ("fid", "kid", "prc")} == {
            cls.get_default_feature_layer_for_metric("fid")}


@pytest.mark.usefixtures("empty_torch_home")
def test_missing_inception_weights_stop_evaluation_before_sampling():
    from explore.evaluation.features import INCEPTION_NAME, FidWeightsMissing

    with pytest.raises(FidWeightsMissing, match="eval.fid.weights_path="):
        M.FeatureExtractor(INCEPTION_NAME)
