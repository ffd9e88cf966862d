"""Every metric of a set of generated images from ONE feature extraction: FID, KID, precision and
recall, and bootstrap replicates of FID.

    extractor = FeatureExtractor("randconv-256", device="cpu", batch_size=64)
    real = RealSet(extractor, real_images, real_stats_name(...), cache_root)   # once
    feats = extractor(fake_images)                                              # once per row
    values = measure(feats, real, ["fid", "kid", "prc"])    # {"fid":, "kid":, "kid_std":, ...}

Features come from the configured torch-fidelity extractor (``randconv-256`` offline,
``inception-v3-compat`` where its weights are), through torch-fidelity's own data loader, and
every metric is torch-fidelity's own function applied to them:

* FID: ``fid_features_to_statistics`` + ``fid_statistics_to_metric`` (metric_fid), the
  functions torch-fidelity's ``calculate_metrics(fid=True)`` runs on the same features: the number
  is the same, bit for bit (tests/test_metrics.py).
* KID: ``kid_features_to_metric`` (metric_kid): the unbiased MMD^2 with the cubic polynomial
  kernel, mean and std over 100 random subsets of ``min(1000, N)`` images of each set
  (torch-fidelity's subset size 1000 cannot exceed the sample count). KID of identical sets is ~0
  and may be slightly negative.
* precision / recall: ``prc_features_to_metric`` (metric_prc), the k-nearest-neighbour manifold
  estimate of Kynkäänniemi et al. 2019 with k = 3: precision = share of generated images inside
  the real manifold (the union of balls around each real feature reaching its 3rd nearest real
  neighbour), recall = share of real images inside the generated manifold. torch-fidelity
  defaults PRC to a VGG-16 extractor that needs downloaded weights; given features of the
  configured extractor it needs nothing (both Inception and randconv-256 name a PRC layer, the
  same as their FID layer). It compares every generated with every real feature: N^2
  distances (15,803 Inception features: ~2.5e8 2048-d distances, minutes on a CPU).

The real set's features and FID statistics are computed once and cached by torch-fidelity's own
cache functions under ``cache_root`` with the name `explore.evaluation.features.real_stats_name`
gives (dataset, resolution, extractor and count in it): the same two files
``calculate_metrics`` writes, so an old cache is reused. They are loaded lazily: FID alone
reads only the statistics.

Bootstrap (`FidBootstrap`): replicate b resamples the generated features with replacement,
using indices that depend only on (bootstrap seed, sampling seed, image count): every weight set
and epoch of one sampling seed resamples the same images, so replicate b of EMA and of raw are
paired and the report takes the percentile interval of their difference. The real statistics
stay fixed (shared by both sides of the difference). Cost: sqrt(real covariance) once (one
eigendecomposition); then per replicate a weighted d x d covariance (N d^2) and one symmetric
eigendecomposition of sqrt(S_r) S_b sqrt(S_r) (d^3), since tr sqrt(S_b S_r) is the sum of the
square roots of its eigenvalues.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.metric_fid import (
    KEY_METRIC_FID,
    fid_features_to_statistics,
    fid_featuresdict_to_statistics_cached,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_kid import (
    KEY_METRIC_KID_MEAN,
    KEY_METRIC_KID_STD,
    kid_features_to_metric,
)
from torch_fidelity.metric_prc import (
    KEY_METRIC_PRECISION,
    KEY_METRIC_RECALL,
    prc_features_to_metric,
)
from torch_fidelity.utils import (
    create_feature_extractor,
    extract_featuresdict_from_input_id_cached,
    get_featuresdict_from_dataset,
)

from explore.core.files import atomic_write
from explore.evaluation.features import (
    INCEPTION_NAME,
    LazyBar,
    UInt8Images,
    check_extractor,
    check_images,
    device_context,
    feature_layer,
    one_blas_thread,
    resolve_inception_weights,
    weights_id,
)

log = logging.getLogger("explore.evaluate")

METRICS = ("fid", "kid", "prc", "memorization")
KID_SUBSETS = 100          # torch-fidelity's default
KID_SUBSET_SIZE = 1000     # torch-fidelity's default; capped at the sample count
KID_SEED = 2020            # torch-fidelity's default rng_seed: the subsets KID draws
PRC_NEIGHBORHOOD = 3       # k of Kynkäänniemi et al. 2019
PRC_BATCH = 2048           # rows of distances at a time (memory only; the result is the same)
NEGATIVE_FID_WARN = 1e-3   # raw FID below -this is not float error: warn (still clamped)


def check_metrics(names: Sequence[str]) -> list[str]:
    """The metric names, checked (fid, kid, prc, memorization), in the order given, without
    repeats."""
    out = []
    for name in names:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}")
        if name not in out:
            out.append(name)
    return out


# --------------------------------------------------------------------------------------------
# Features


class FeatureExtractor:
    """The configured torch-fidelity extractor, built once: (N, 3, H, W) uint8 -> (N, d).

    Missing Inception weights raise `FidWeightsMissing` here, before any image is generated.
    """

    def __init__(self, name: str, *, weights_path: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 64):
        self.name = check_extractor(name)
        self.layer = feature_layer(name)
        self.weights = resolve_inception_weights(weights_path) if name == INCEPTION_NAME else None
        self.weights_id = weights_id(name, self.weights)  # fid.csv's extractor_weights
        self.device, self.batch_size = device, int(batch_size)
        self.cuda, _ = device_context(device)
        self._net = None

    def kwargs(self) -> dict:
        """What torch-fidelity's functions are called with (as ``calculate_metrics`` calls
        them)."""
        return dict(feature_extractor=self.name, feature_extractor_weights_path=self.weights,
                    cuda=self.cuda, batch_size=self.batch_size, save_cpu_ram=True, verbose=False)

    @property
    def net(self):
        if self._net is None:
            _, on_device = device_context(self.device)
            with on_device:
                self._net = create_feature_extractor(self.name, [self.layer], **self.kwargs())
        return self._net

    def __call__(self, images: torch.Tensor, *, progress: bool = False,
                 desc: str = "features") -> torch.Tensor:
        """Features of `images` (CPU tensor, the extractor's dtype)."""
        check_images(images, desc)
        bar = LazyBar(len(images), desc) if progress else None
        _, on_device = device_context(self.device)
        start = time.perf_counter()
        try:
            with on_device:
                out = get_featuresdict_from_dataset(UInt8Images(images, bar), self.net,
                                                    self.batch_size, self.cuda, True, False)
        finally:
            if bar is not None:
                bar.close()
        self.log_rate(desc, len(images), time.perf_counter() - start)
        return out[self.layer]

    def log_rate(self, what: str, count: int, seconds: float) -> None:
        """Inception's features are the slow part of a row on a CPU: say how slow, in the log."""
        if self.name == INCEPTION_NAME and seconds > 1:  # (not a read from the cache)
            log.info("%s: %d images through %s in %.1f s (%.1f images/s)", what, count,
                     self.name, seconds, count / seconds)


class RealSet:
    """The real images' features and FID statistics, each computed once, cached by
    torch-fidelity under `cache_root` as `cache_name` (files named as ``calculate_metrics``'), and
    loaded only when first asked for."""

    def __init__(self, extractor: FeatureExtractor, images: torch.Tensor, cache_name: str,
                 cache_root: str | os.PathLike | None, progress: bool = False):
        check_images(images, "real")
        self.extractor, self.images, self.cache_name = extractor, images, cache_name
        self.cache_root = None if cache_root is None else str(cache_root)
        self.progress = progress
        self._features: torch.Tensor | None = None
        self._stats: dict | None = None

    def __len__(self) -> int:
        return len(self.images)

    def _kwargs(self) -> dict:
        bar = LazyBar(len(self.images), "real features") if self.progress else None
        return {**self.extractor.kwargs(), "input2": UInt8Images(self.images, bar),
                "input2_cache_name": self.cache_name, "cache": True,
                "cache_root": self.cache_root}

    @property
    def features(self) -> torch.Tensor:
        if self._features is None:
            _, on_device = device_context(self.extractor.device)
            start = time.perf_counter()
            with on_device:
                found = extract_featuresdict_from_input_id_cached(2, self.extractor.net,
                                                                  **self._kwargs())
            self._features = found[self.extractor.layer]
            self.extractor.log_rate("real features (cached once)", len(self.images),
                                    time.perf_counter() - start)
        return self._features

    @property
    def stats(self) -> dict:
        """{"mu", "sigma"} as torch-fidelity computes them (read from its cache when there)."""
        if self._stats is None:
            lazy = _LazyFeatures(self)
            self._stats = fid_featuresdict_to_statistics_cached(
                lazy, self.cache_name, self.extractor.net, self.extractor.layer,
                **{k: v for k, v in self._kwargs().items() if k not in ("input2",)})
        return self._stats


class _LazyFeatures(Mapping):
    """A featuresdict whose features are extracted (or loaded) only if a cache miss reads them."""

    def __init__(self, real: RealSet):
        self.real = real

    def __getitem__(self, key):
        if key != self.real.extractor.layer:
            raise KeyError(key)
        return self.real.features

    def __iter__(self):
        return iter([self.real.extractor.layer])

    def __len__(self) -> int:
        return 1


# --------------------------------------------------------------------------------------------
# Metrics from features


def clamp_fid(fid: float) -> float:
    """max(fid, 0): torch-fidelity's matrix square root can give tiny negatives for (near-)
    identical sets; below -NEGATIVE_FID_WARN it is not float error, and a warning says so."""
    if fid < -NEGATIVE_FID_WARN:
        warnings.warn(f"FID {fid:.6g} is negative beyond float error; reported as 0", stacklevel=3)
    return max(fid, 0.0)


def fid_from_features(fake: torch.Tensor, real_stats: dict) -> float:
    """torch-fidelity's FID of generated features against the real statistics (clamped at 0,
    as ``calculate_metrics``)."""
    with one_blas_thread():
        stats = fid_features_to_statistics(fake.cpu())
        value = fid_statistics_to_metric(stats, real_stats, False)[KEY_METRIC_FID]
    return clamp_fid(float(value))


def kid_from_features(fake: torch.Tensor, real: torch.Tensor, subsets: int = KID_SUBSETS,
                      subset_size: int = KID_SUBSET_SIZE, seed: int = KID_SEED
                      ) -> tuple[float, float]:
    """torch-fidelity's KID: (mean, std) over `subsets` subsets of min(subset_size, N) images.

    When that size is both sets' whole count (N <= 1000 at equal counts), every subset is the
    whole set reordered and gives the same unbiased MMD^2 (it is permutation-invariant): one
    subset is computed instead of 100 identical ones, and the std is 0 (no subset variation;
    the spread over sampling seeds is the uncertainty to read)."""
    size = min(int(subset_size), len(fake), len(real))
    if size == len(fake) == len(real):
        subsets = 1
    with one_blas_thread():  # numpy's threads fight torch's on 2 cores: 3x slower
        out = kid_features_to_metric(fake.cpu(), real.cpu(), kid_subsets=int(subsets),
                                     kid_subset_size=size, rng_seed=int(seed), verbose=False)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def precision_recall(fake: torch.Tensor, real: torch.Tensor, k: int = PRC_NEIGHBORHOOD
                     ) -> tuple[float, float]:
    """torch-fidelity's precision and recall (Kynkäänniemi et al. 2019, k-NN manifolds)."""
    if min(len(fake), len(real)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images per set")
    out = prc_features_to_metric(fake.cpu(), real.cpu(), prc_neighborhood=int(k),
                                 prc_batch_size=PRC_BATCH, save_cpu_ram=True, verbose=False)
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])


def measure(fake: torch.Tensor, real: RealSet, metrics: Sequence[str]) -> dict[str, float]:
    """The columns of `metrics` (runfiles.METRIC_COLUMNS) from one set of generated features."""
    out: dict[str, float] = {}
    for name in check_metrics(metrics):
        if name == "fid":
            out["fid"] = fid_from_features(fake, real.stats)
        elif name == "kid":
            out["kid"], out["kid_std"] = kid_from_features(fake, real.features)
        elif name == "prc":
            out["precision"], out["recall"] = precision_recall(fake, real.features)
        # memorization compares with the whole training set, not the real subset:
        # explore.evaluation.rows.memorization_columns
    return out


# --------------------------------------------------------------------------------------------
# Bootstrap


def bootstrap_indices(num_images: int, replicates: int, boot_seed: int, sample_seed: int
                      ) -> torch.Tensor:
    """(replicates, num_images) resample indices, a function of (boot_seed, sample_seed,
    num_images) only: shared by every weight set and epoch of a sampling seed."""
    g = torch.Generator().manual_seed((int(boot_seed) * 1_000_003 + int(sample_seed)) % 2**63)
    return torch.randint(0, int(num_images), (int(replicates), int(num_images)), generator=g)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


class FidBootstrap:
    """Replicate FIDs of resampled generated features against fixed real statistics.

    With R = sqrt(S_r) (once), tr sqrt(S_b S_r) = tr sqrt(R S_b R), and R S_b R is the
    covariance of Z = X R: Z is made once per row, and each replicate needs only its weighted
    Gram matrix (over the ~63% of images a resample draws at least once) and one symmetric
    eigendecomposition.
    """

    def __init__(self, real_stats: dict, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.mu = torch.as_tensor(np.asarray(real_stats["mu"]), dtype=torch.float64,
                                  device=self.device)
        sigma = torch.as_tensor(np.asarray(real_stats["sigma"]), dtype=torch.float64,
                                device=self.device)
        self.trace = float(sigma.trace())
        self.root = _sqrt_psd(sigma)  # once per evaluation

    def replicates(self, fake: torch.Tensor, indices: torch.Tensor) -> np.ndarray:
        """One FID per row of `indices` (bootstrap_indices): that of the resampled features,
        as torch-fidelity's FID of the resampled rows would give (up to float rounding)."""
        x = fake.to(device=self.device, dtype=torch.float64)
        n = x.shape[0]
        if indices.shape[1] != n:
            raise ValueError(f"indices resample {indices.shape[1]} images, features have {n}")
        z = x @ self.root
        out = np.empty(indices.shape[0])
        with one_blas_thread():
            for b, idx in enumerate(indices):
                counts = torch.bincount(idx.to(self.device), minlength=n).to(torch.float64)
                drawn = counts > 0
                w, xs, zs = counts[drawn], x[drawn], z[drawn]
                mu = w @ xs / n
                trace = float((w * ((xs - mu) ** 2).sum(1)).sum()) / (n - 1)
                zc = zs - w @ zs / n
                inner = (zc.T * w) @ zc / (n - 1)   # = R S_b R
                roots = torch.linalg.eigvalsh(inner).clamp(min=0).sqrt().sum()
                diff = mu - self.mu
                out[b] = float(diff @ diff) + trace + self.trace - 2 * float(roots)
        return out


# --------------------------------------------------------------------------------------------
# Features on disk (eval.keep_features)


def save_features(path: Path, features: torch.Tensor, key: dict) -> Path:
    """Keep a row's generated features as float16 (and the dtype to restore, and the row key
    they belong to) in an .npz, written atomically."""
    payload = {"features": features.cpu().to(torch.float16).numpy(),
               "dtype": np.array(str(features.dtype).removeprefix("torch.")),
               "key": np.array(json.dumps({k: str(v) for k, v in key.items()}, sort_keys=True))}

    def write(f):
        np.savez(f, **payload)

    return atomic_write(path, write)


def load_features(path: Path, key: dict) -> torch.Tensor | None:
    """A row's kept features (in their original dtype, float16-rounded), or None when there is
    no file, it cannot be read, or it belongs to another key."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            stored = json.loads(str(z["key"]))
            if stored != {k: str(v) for k, v in key.items()}:
                log.warning("%s holds features of another row: ignored", path)
                return None
            return torch.from_numpy(z["features"]).to(getattr(torch, str(z["dtype"])))
    except (OSError, ValueError, KeyError) as err:
        log.warning("cannot read kept features %s (%s): sampling again", path, err)
        return None
