"""Training images, held in memory as one uint8 tensor (N, 3, S, S).

Three sources, each built from config through `_target_`:

- `shapes(...)`: an embedded, procedurally drawn set (no download, deterministic for a seed):
  one or two flat-coloured circles, squares or triangles on a two-colour gradient. Simple enough
  that a small diffusion model visibly learns it within minutes on a CPU.
- `folder(root, ...)`: every image under a folder, recursively; short side resized to the image
  size (bilinear, antialiased), centre crop, RGB.
- `afhq(...)`: AFHQv2 train split from the HuggingFace hub (`huggan/AFHQv2`), as the original
  study loaded it; needs the `datasets` package and a reachable hub.

Holding uint8 in memory is the point: AFHQv2 at 64x64 is 194 MB, the training loop indexes
batches straight from it (no DataLoader workers), and FID reads the same tensor as real images.
Batches become floats in [-1, 1] with `to_float`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class DataError(UserError):
    """A data source that cannot be used; the message names the path or setting."""


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, 3, S, S) uint8
    name: str             # identifies the content, for caches (FID real statistics)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise DataError(f"ImageSet {self.name}: expected uint8 (N, 3, S, S), got "
                            f"{self.images.dtype} {tuple(self.images.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]


def to_float(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return batch_uint8.float().div_(127.5).sub_(1.0)


def to_uint8(batch: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], as the study maps samples: (x + 1) / 2, clamped."""
    return ((batch.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


# -- shapes ------------------------------------------------------------------------------------
def shapes(image_size: int = 32, num_images: int = 4096, seed: int = 0) -> ImageSet:
    """The embedded procedural image set (see the module docstring)."""
    if image_size < 8:
        raise DataError(f"data.image_size={image_size}: shapes needs at least 8 pixels")
    if num_images < 1:
        raise DataError(f"data.num_images={num_images} must be >= 1")
    g = torch.Generator().manual_seed(int(seed))
    chunks = [_draw_shapes(min(1024, num_images - i), image_size, g)
              for i in range(0, num_images, 1024)]
    return ImageSet(torch.cat(chunks), f"shapes-s{seed}-n{num_images}-{image_size}px")


def _draw_shapes(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    ss = 2 * size  # draw at 2x and average down: anti-aliased edges
    coords = (torch.arange(ss, dtype=torch.float32) + 0.5) / ss
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    rand = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    # background: vertical gradient between two muted colours
    top, bottom = 0.15 + 0.5 * rand(n, 3), 0.15 + 0.5 * rand(n, 3)
    img = top[:, :, None, None] + (bottom - top)[:, :, None, None] * yy
    num_shapes = 1 + (rand(n) < 0.5).long()
    for k in range(2):
        kind = torch.randint(0, 3, (n,), generator=g)
        r = 0.12 + 0.16 * rand(n)
        cx, cy = 0.2 + 0.6 * rand(n), 0.2 + 0.6 * rand(n)
        colour = rand(n, 3)
        colour = colour / colour.amax(1, keepdim=True).clamp_min(1e-3)  # saturated, bright
        dx = (xx[None] - cx[:, None, None]) / r[:, None, None]
        dy = (yy[None] - cy[:, None, None]) / r[:, None, None]
        circle = dx.square() + dy.square() <= 1
        square = (dx.abs() <= 0.85) & (dy.abs() <= 0.85)
        triangle = (dy <= 0.8) & (dy >= 1.6 * dx.abs() - 0.9)
        mask = torch.where(kind[:, None, None] == 0, circle,
                           torch.where(kind[:, None, None] == 1, square, triangle))
        mask &= (num_shapes > k)[:, None, None]
        img = torch.where(mask[:, None], colour[:, :, None, None], img)
    img = F.avg_pool2d(img, 2)
    return (img * 255).round_().clamp_(0, 255).to(torch.uint8)


# -- a folder of images -------------------------------------------------------------------------
def list_images(root: str | Path) -> list[Path]:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data.root={root} does not exist: point data.root at a folder of images")
    if not root.is_dir():
        raise DataError(f"data.root={root} is not a folder")
    files = sorted(p for p in root.rglob("*")
                   if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataError(f"data.root={root} holds no images (looked recursively for "
                        f"{', '.join(IMAGE_EXTENSIONS)})")
    return files


def load_image(path: Path, image_size: int) -> torch.Tensor:
    """One image -> uint8 (3, S, S): short side to S (bilinear, antialiased), centre crop."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as TF

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.load()
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    x = TF.pil_to_tensor(im)
    x = TF.resize(x, image_size, antialias=True)
    return TF.center_crop(x, [image_size, image_size])


def folder(root: str, image_size: int = 64, num_images: int | None = None,
           workers: int | None = None, progress: bool = True) -> ImageSet:
    """Every image under `root` (recursively), decoded once into memory; with `num_images`,
    the first that many in sorted path order (a fixed subset for quick runs)."""
    if not root:
        raise DataError("data=folder needs data.root=/path/to/images")
    files = list_images(root)
    if num_images is not None:
        if int(num_images) < 1:
            raise DataError(f"data.num_images={num_images} must be >= 1 (or null: all)")
        files = files[:int(num_images)]
    workers = workers or min(8, os.cpu_count() or 1)
    from tqdm import tqdm

    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(lambda p: load_image(p, image_size), files)
        images = list(tqdm(it, total=len(files), desc=f"loading {root}", disable=not progress,
                           unit="img", leave=False))
    # name: the folder plus a digest of its file list, so caches notice added/removed files
    digest = hashlib.sha1("\n".join(str(p.relative_to(root)) for p in files).encode())
    stem = Path(root).expanduser().resolve().name
    return ImageSet(torch.stack(images), f"folder-{stem}-{digest.hexdigest()[:10]}-"
                                         f"n{len(files)}-{image_size}px")


# -- AFHQv2 from the hub -----------------------------------------------------------------------
def afhq(image_size: int = 64, split: str = "train", repo: str = "huggan/AFHQv2",
         num_images: int | None = None, progress: bool = True) -> ImageSet:
    """AFHQv2 from the HuggingFace hub, prepared like `folder` (`num_images`: the first N)."""
    hint = ("Without a reachable hub, download AFHQv2 once (e.g. the 'train' folder of "
            "huggan/AFHQv2 or the StarGAN-v2 AFHQ release) and run with data=folder "
            "data.root=/path/to/afhq")
    try:
        import datasets  # optional dependency: pip install -e '.[hub]'
    except ImportError as e:
        raise DataError(f"data=afhq needs the HuggingFace 'datasets' package "
                        f"(pip install -e '.[hub]'). {hint}") from e
    try:
        ds = datasets.load_dataset(repo, split=split)
    except Exception as e:  # the hub library raises many kinds when offline
        raise DataError(f"data=afhq could not load {repo!r} from the HuggingFace hub "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). {hint}") from e
    from torchvision.transforms.v2 import functional as TF
    from tqdm import tqdm

    images = []
    if num_images is not None:
        ds = ds.select(range(min(int(num_images), len(ds))))
    for row in tqdm(ds, desc=f"preparing {repo}", disable=not progress, unit="img"):
        x = TF.pil_to_tensor(row["image"].convert("RGB"))
        x = TF.center_crop(TF.resize(x, image_size, antialias=True), [image_size, image_size])
        images.append(x)
    return ImageSet(torch.stack(images), f"afhqv2-{split}-n{len(images)}-{image_size}px")


def subset(images: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """`count` images chosen with `seed` (all of them, in order, when count >= N)."""
    n = images.shape[0]
    if count >= n:
        return images
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count]
    return images[idx.sort().values]


def grid_image(images_uint8: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """A (3, H, W) uint8 grid of a batch, nrow per row (square by default)."""
    from torchvision.utils import make_grid

    nrow = nrow or max(1, int(math.ceil(math.sqrt(images_uint8.shape[0]))))
    return make_grid(images_uint8, nrow=nrow, padding=1, pad_value=255)
