"""What features are extracted with, and where the real images' statistics are cached: the
extractor names and widths, the Inception weights (offline-safe), cache names, the in-memory
image dataset torch-fidelity reads, and the device and BLAS-thread contexts. The metrics made
from the features are explore.evaluation.metrics: the one path every FID takes.

Extractors (`EXTRACTORS`, name -> feature width):

* ``inception-v3-compat`` (2048-d): torch-fidelity's standard FID network, the study's protocol
  (STUDY.md "FID protocol"). Its weights: ``weights_path`` when given, torch-fidelity's own file
  when it is in torch hub's checkpoint folder, else the same network from the package index
  (explore.evaluation.inception), fetched once into the cache; never a download from GitHub.
  When none can be had, `FidWeightsMissing` is raised *before* any work, saying how to get one.
* ``randconv-256`` (256-d): a fixed random-weight conv net needing no file
  (explore/evaluation/extractors.py). Numbers from it are NOT comparable with Inception FID.

Caching: torch-fidelity keys its statistics cache on the cache name and the extractor only, not
on the images, their size, their count or the extractor's weights, so stale statistics would be
reused silently. Callers name the real set's entry with `real_stats_name(dataset_id, resolution,
extractor, count, weights)`, which puts all of those in the name. The generated set is never
cached. torch-fidelity writes two files per entry in ``cache_root``: the statistics and the raw
features (N x dim floats; ~130 MB for 15,803 Inception features); later calls read only the
statistics.

Sample counts: FID is biased by the sample count; compare only numbers made with the same count
and extractor. Below `min_stable_count(extractor)` samples the covariance is rank-deficient.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from tqdm import tqdm

from explore.core.errors import UserError
from explore.core.packages import PackagedFileError, sha256_of
from explore.evaluation.extractors import RANDCONV_DIM, RANDCONV_NAME
from explore.evaluation.inception import (
    CONVERTED_NAME,
    FID_NETWORK,
    WEIGHTS_ID,
    converted_weights,
)

INCEPTION_NAME = "inception-v3-compat"
EXTRACTORS: dict[str, int] = {INCEPTION_NAME: 2048, RANDCONV_NAME: RANDCONV_DIM}
INCEPTION_FETCH = FID_NETWORK.fetch_command


class FidWeightsMissing(UserError):
    """The Inception weights are neither given, nor in torch hub's cache, nor downloadable."""


# --------------------------------------------------------------------------------------------
# Extractor facts


def check_extractor(extractor: str) -> str:
    """Return `extractor` if known, else raise ValueError listing the valid names."""
    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown FID extractor {extractor!r}; valid: {', '.join(EXTRACTORS)}")
    return extractor


def feature_dim(extractor: str) -> int:
    """Width of the extractor's FID features (2048 for Inception, 256 for randconv-256)."""
    return EXTRACTORS[check_extractor(extractor)]


def min_stable_count(extractor: str) -> int:
    """Fewest images per set for a usable FID: the feature width (2048 for Inception).

    N samples give a covariance of rank <= N - 1, singular for N <= width, which makes FID noisy
    and biased. "At least the width" is the conventional threshold (TTUR: >= 2048 for
    Inception) that callers warn below; more is better, and counts must match across runs.
    """
    return feature_dim(extractor)


def feature_layer(extractor: str) -> str:
    """The layer torch-fidelity uses for FID ("2048", "256"); part of its cache file names."""
    cls = FEATURE_EXTRACTORS_REGISTRY[check_extractor(extractor)]
    return cls.get_default_feature_layer_for_metric("fid")


# --------------------------------------------------------------------------------------------
# Cache naming


def _filename_safe(text: str, max_len: int = 80) -> str:
    """`text` reduced to [A-Za-z0-9._+=], plus a short hash of the original whenever that changed
    it, so that distinct ids (``a/b`` vs ``a_b``) never map to the same name."""
    safe = re.sub(r"[^A-Za-z0-9._+=]+", "_", text).strip("._") or "x"
    if safe != text or len(safe) > max_len:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        safe = f"{safe[:max_len]}_{digest}"
    return safe


def real_stats_name(dataset_id: str, resolution: int, extractor: str, count: int,
                    weights: str = "") -> str:
    """Cache name for a real set's statistics, unique per (dataset, resolution, extractor, count,
    extractor weights: `weights_id`, "" for an extractor without a weights file).

    `dataset_id` must identify the images' content (e.g. a folder path plus a split, or include
    `content_digest(images)`): the cache cannot tell two sets with the same name apart.
    """
    check_extractor(extractor)
    if resolution <= 0 or count <= 0:
        raise ValueError(f"resolution and count must be positive, got {resolution}, {count}")
    tag = f"-w{hashlib.sha1(weights.encode()).hexdigest()[:8]}" if weights else ""
    return f"{_filename_safe(dataset_id)}-{resolution}px-n{count}-{extractor}{tag}"


def content_digest(images: torch.Tensor) -> str:
    """Short SHA-1 of the images' shape, dtype and bytes (~0.2 s for 15,803 64x64 images)."""
    h = hashlib.sha1(f"{tuple(images.shape)}{images.dtype}".encode())
    h.update(images.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def default_cache_root() -> Path:
    """torch-fidelity's default cache folder, $TORCH_HOME/fidelity_cache."""
    return Path(torch.hub._get_torch_home()) / "fidelity_cache"


def real_stats_path(real_cache_name: str, extractor: str, cache_root: str | Path | None) -> Path:
    """Where torch-fidelity stores (or will store) the FID statistics of `real_cache_name`.

    Mirrors torch_fidelity.metric_fid's naming, "{name}-{extractor}-stat-fid-{layer}.pt"
    (tests/test_fid.py checks that the file really appears there).
    """
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    layer = feature_layer(extractor)
    return root / f"{real_cache_name}-{extractor}-stat-fid-{layer}.pt"


# --------------------------------------------------------------------------------------------
# Inception weights (offline-safe)


def inception_weights_filename() -> str:
    return os.path.basename(urllib.parse.urlparse(URL_INCEPTION_V3).path)


def inception_hub_file() -> Path:
    """Where torch.hub (hence torch-fidelity) looks for the downloaded Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / inception_weights_filename()


def weights_missing_message(reason: str) -> str:
    dest = inception_hub_file()
    return (
        f"{reason}\n"
        f"Fetch the FID network once from the package index (87 MB; on a node without internet, "
        f"where the index is reachable, with EMA_STUDY_CACHE on a shared file system):\n"
        f"    {INCEPTION_FETCH}\n"
        f"or download torch-fidelity's own file\n    {URL_INCEPTION_V3}\n"
        f"and put it at\n    {dest}\n"
        f"(torch hub's checkpoint folder; it moves with $TORCH_HOME), or pass its path as\n"
        f"    eval.fid.weights_path=/path/to/{inception_weights_filename()}\n"
        f"Without Inception, extractor {RANDCONV_NAME!r} needs no file (its FID is not comparable "
        f"with Inception FID)."
    )


def resolve_inception_weights(weights_path: str | os.PathLike | None) -> str:
    """The weights file to hand torch-fidelity, found before any work is done: the given file,
    else torch-fidelity's own file in torch hub's cache, else the FID network from the package
    index (explore.evaluation.inception: fetched once when missing). Never a download from
    GitHub. Raises FidWeightsMissing when none can be had."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FidWeightsMissing(
                weights_missing_message(f"Inception weights file {path} does not exist.")
            )
        return str(path)
    cached = inception_hub_file()
    if cached.is_file():
        return str(cached)
    try:
        return str(converted_weights())
    except PackagedFileError as err:
        raise FidWeightsMissing(weights_missing_message(str(err))) from None


def weights_id(extractor: str, weights: str | None) -> str:
    """What fid.csv's `extractor_weights` says of the weights a row was made with: the packaged
    FID network's id, else the first 12 hex digits of the file's sha256; "" for an extractor
    that has no weights file (randconv-256: fixed by its name)."""
    if extractor != INCEPTION_NAME or weights is None:
        return ""
    if Path(weights).name == CONVERTED_NAME:
        return WEIGHTS_ID
    return f"{Path(weights).name}:sha256:{sha256_of(Path(weights))[:12]}"


# --------------------------------------------------------------------------------------------
# Inputs


class UInt8Images(Dataset):
    """In-memory (N, 3, H, W) uint8 images; item i is the bare 3xHxW tensor torch-fidelity wants.

    Counts fetched items on an optional tqdm bar: the loader runs in this process (no workers),
    so the count is the extraction progress.
    """

    def __init__(self, images: torch.Tensor, bar: LazyBar | None = None):
        self.images = images
        self.bar = bar

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.bar is not None:
            self.bar.step(last=i == len(self) - 1)
        return self.images[i]


class LazyBar:
    """A tqdm bar opened on the first item, so a set that is never read (cached) shows none."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc = total, desc
        self.bar: tqdm | None = None

    def step(self, last: bool) -> None:
        if self.bar is None:
            self.bar = tqdm(total=self.total, desc=self.desc, unit="img", leave=False)
        # torch-fidelity reads item 0 once as a type check before its (sequential) loader, so
        # clamp the count, and close on the last index so the next set's bar takes this line.
        if self.bar.n < self.total:
            self.bar.update(1)
        if last:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()  # idempotent in tqdm


def check_images(images: torch.Tensor, what: str) -> None:
    if not (torch.is_tensor(images) and images.dtype == torch.uint8):
        raise TypeError(f"{what} must be a uint8 tensor, got {getattr(images, 'dtype', images)}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{what} must be (N, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] < 2:
        raise ValueError(f"{what} needs at least 2 images for a covariance, got {images.shape[0]}")


def device_context(device: str | torch.device):
    """(cuda flag for torch-fidelity, context making `device` the current CUDA device)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return False, nullcontext()
    if dev.type != "cuda":
        raise ValueError(f"FID device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if not torch.cuda.is_available():
        raise RuntimeError(f"FID device {device!r} requested but CUDA is not available")
    # torch-fidelity calls .cuda() with no index, i.e. the *current* device: make it ours
    # (torch.cuda.device sets it via set_device and restores the previous one afterwards).
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return True, torch.cuda.device(index)


# --------------------------------------------------------------------------------------------
# BLAS threads

# (setter, getter) names in the OpenBLAS builds numpy wheels bundle, newest first.
_OPENBLAS_THREAD_FNS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)


def _numpy_openblas() -> tuple[Callable[[int], object], Callable[[], int]] | None:
    """numpy's bundled OpenBLAS thread setter and getter, or None if not found."""
    base = os.path.dirname(np.__file__)
    libs = glob.glob(os.path.join(base, os.pardir, "numpy.libs", "*openblas*"))
    libs += glob.glob(os.path.join(base, ".dylibs", "*openblas*"))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)  # already loaded by numpy: this returns the same instance
        except OSError:
            continue
        for set_name, get_name in _OPENBLAS_THREAD_FNS:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                return getattr(lib, set_name), getattr(lib, get_name)
    return None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run numpy's BLAS/LAPACK on one thread inside the block (restored afterwards).

    torch-fidelity's FID takes eigvals of a d x d non-symmetric matrix, which threads badly:
    on this project's 2-core machines, 2048-d took 11.7 s with OpenBLAS's default threads and
    2.4 s with one, and 256-d sometimes 1.3 s instead of 0.015 s. A no-op where numpy's
    OpenBLAS cannot be found (other BLAS builds).
    """
    fns = _numpy_openblas()
    if fns is None:
        yield
        return
    set_threads, get_threads = fns
    before = get_threads()
    set_threads(1)
    try:
        yield
    finally:
        set_threads(before)
