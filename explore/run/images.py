"""Pictures a run folder holds (sample grids, closest-pair grids), written atomically."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from explore.core.files import atomic_write


def write_uint8_image(image: torch.Tensor, path: Path) -> None:
    """A (3, H, W) uint8 tensor as a PNG, atomically."""
    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
    atomic_write(path, lambda f: picture.save(f, format="png"))
