"""Memorisation rate: how many generated images are copies of a training image.

The copy criterion of the diffusion-memorisation literature: a generated image x is a copy when
its distance to the nearest training image is below 1/3 of its distance to the second-nearest,
d1(x) < d2(x) / 3 (a near-duplicate of one image, not merely close to a dense region). The rate
is the share of generated images that are copies, measured in the FID extractor's feature space
(the same features as the row's other metrics) and, optionally, in pixel space.

Cost: one (generated x training) distance matrix in chunks: at the reference size (15,803 x
15,803 Inception features of 2048 floats) about 1e12 multiply-adds, seconds on a GPU, minutes on
a CPU; at smoke size (512 x 2,048 x 256) milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from explore.nets.data import grid_image

RATIO = 1.0 / 3.0
CHUNK = 1024


@dataclass
class Nearest:
    d1: torch.Tensor     # (G,) distance of each generated image to its nearest training image
    d2: torch.Tensor     # (G,) ... to its second-nearest
    index: torch.Tensor  # (G,) index of the nearest training image

    def copies(self, ratio: float = RATIO) -> torch.Tensor:
        return self.d1 < ratio * self.d2

    def rate(self, ratio: float = RATIO) -> float:
        return float(self.copies(ratio).float().mean())

    def closest(self, k: int = 8) -> torch.Tensor:
        """Indices of the k generated images most like a copy (smallest d1 / d2)."""
        score = self.d1 / self.d2.clamp_min(1e-12)
        return torch.argsort(score)[:k]


@torch.no_grad()
def nearest_two(generated: torch.Tensor, training: torch.Tensor, chunk: int = CHUNK,
                device: str | torch.device = "cpu") -> Nearest:
    """Euclidean nearest and second-nearest training rows of every generated row (features,
    or images flattened), in chunks so the distance matrix never exists whole."""
    g = generated.reshape(len(generated), -1).to(device, torch.float32)
    t = training.reshape(len(training), -1).to(device, torch.float32)
    if len(t) < 2:
        raise ValueError("memorisation needs at least 2 training images")
    d1, d2, idx = [], [], []
    for start in range(0, len(g), chunk):
        dist = torch.cdist(g[start:start + chunk], t)
        best = torch.topk(dist, 2, dim=1, largest=False)
        d1.append(best.values[:, 0])
        d2.append(best.values[:, 1])
        idx.append(best.indices[:, 0])
    return Nearest(torch.cat(d1).cpu(), torch.cat(d2).cpu(), torch.cat(idx).cpu())


def pixels(images_uint8: torch.Tensor) -> torch.Tensor:
    """Images as pixel-space feature rows in [0, 1]."""
    return images_uint8.reshape(len(images_uint8), -1).float() / 255.0


def pair_grid(generated: torch.Tensor, training: torch.Tensor, nearest: Nearest,
              k: int = 8) -> torch.Tensor:
    """A uint8 (3, H, W) grid of the k closest pairs: generated images on the top row, their
    nearest training images below."""
    pick = nearest.closest(k)
    pairs = torch.cat([generated[pick], training[nearest.index[pick]]])
    return grid_image(pairs, nrow=len(pick))
