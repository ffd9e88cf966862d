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

Held-out images (for the held-out denoising loss, explore.training.heldout), off unless asked for:
`holdout_root` (a folder, e.g. AFHQv2's test split) or `holdout_num` N. For `shapes`, N more
images drawn from their own stream (the training set is unchanged); for `folder`/`afhq`, N
images set aside by a fixed permutation, which the log and the data set's name say (the training
set is then N smaller: never done unless asked).
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

from explore.core.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class DataError(UserError):
    """A data source that cannot be used; the message names the path or setting."""


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, 3, S, S) uint8
    name: str             # identifies the content, for caches (FID real statistics)
    holdout: torch.Tensor | None = None  # (M, 3, S, S) uint8 images never trained on

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
def shapes(image_size: int = 32, num_images: int = 4096, seed: int = 0,
           holdout_num: int | None = None) -> ImageSet:
    """The embedded procedural image set (see the module docstring); with `holdout_num`, that
    many more images from a stream of their own (seed + 1,000,003) as the held-out set."""
    if image_size < 8:
        raise DataError(f"data.image_size={image_size}: shapes needs at least 8 pixels")
    if num_images < 1:
        raise DataError(f"data.num_images={num_images} must be >= 1")
    held = _draw_all(int(holdout_num), image_size, int(seed) + 1_000_003) if holdout_num else None
    return ImageSet(_draw_all(num_images, image_size, int(seed)),
                    f"shapes-s{seed}-n{num_images}-{image_size}px", held)


def _draw_all(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([_draw_shapes(min(1024, n - i), size, g) for i in range(0, n, 1024)])


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
           workers: int | None = None, progress: bool = True, holdout_root: str | None = None,
           holdout_num: int | None = None) -> ImageSet:
    """Every image under `root` (recursively), decoded once into memory; with `num_images`,
    the first that many in sorted path order (a fixed subset for quick runs). Held-out images:
    every image under `holdout_root`, or `holdout_num` set aside (module docstring)."""
    if not root:
        raise DataError("data=folder needs data.root=/path/to/images")
    files = list_images(root)
    if num_images is not None:
        if int(num_images) < 1:
            raise DataError(f"data.num_images={num_images} must be >= 1 (or null: all)")
        files = files[:int(num_images)]
    images = _load_all(files, image_size, root, workers, progress)
    # name: the folder plus a digest of its file list, so caches notice added/removed files
    digest = hashlib.sha1("\n".join(str(p.relative_to(root)) for p in files).encode())
    stem = Path(root).expanduser().resolve().name
    out = ImageSet(images, f"folder-{stem}-{digest.hexdigest()[:10]}-n{len(files)}-"
                           f"{image_size}px")
    return with_holdout(out, holdout_root, holdout_num, image_size, workers, progress)


def _load_all(files, image_size: int, root, workers, progress) -> torch.Tensor:
    workers = workers or min(8, os.cpu_count() or 1)
    from tqdm import tqdm

    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(lambda p: load_image(p, image_size), files)
        return torch.stack(list(tqdm(it, total=len(files), desc=f"loading {root}",
                                     disable=not progress, unit="img", leave=False)))


def with_holdout(data: ImageSet, holdout_root: str | None, holdout_num: int | None,
                 image_size: int, workers=None, progress: bool = True) -> ImageSet:
    """`data` with its held-out images: those under `holdout_root`, or `holdout_num` of its own
    set aside by a fixed permutation (then named in the data set's name, and logged)."""
    if holdout_root and holdout_num:
        raise DataError("give data.holdout_root or data.holdout_num, not both")
    if holdout_root:
        held = _load_all(list_images(holdout_root), image_size, holdout_root, workers, progress)
        return ImageSet(data.images, data.name, held)
    if not holdout_num:
        return data
    n = int(holdout_num)
    if not 0 < n < len(data):
        raise DataError(f"data.holdout_num={n}: must be between 1 and {len(data) - 1} (the set "
                        f"has {len(data)} images)")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(20_241_201))
    keep, held = perm[n:].sort().values, perm[:n].sort().values
    log.warning("data.holdout_num=%d: %d images set aside as held-out, training on the other "
                "%d", n, n, len(keep))
    return ImageSet(data.images[keep], f"{data.name}-holdout{n}", data.images[held])


# -- AFHQv2 from the hub -----------------------------------------------------------------------
def afhq(image_size: int = 64, split: str = "train", repo: str = "huggan/AFHQv2",
         num_images: int | None = None, progress: bool = True, holdout_root: str | None = None,
         holdout_num: int | None = None) -> ImageSet:
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
    out = ImageSet(torch.stack(images), f"afhqv2-{split}-n{len(images)}-{image_size}px")
    return with_holdout(out, holdout_root, holdout_num, image_size, progress=progress)


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
