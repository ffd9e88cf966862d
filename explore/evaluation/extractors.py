"""A download-free feature extractor for FID: a fixed random-weight convolutional network.

`RandConvFeatures` is registered with torch-fidelity as ``randconv-256``: *rand*om *conv*olutional
features, 256 wide. It exists so that FID can be computed with no network and no weights file (the
embedded synthetic dataset, the smoke study, the tests). It is an honest stand-in, not Inception:

* numbers from it are NOT comparable with Inception FID (different features, different scale), nor
  with numbers from any other extractor; compare them only with each other, at equal sample counts;
* its weights are drawn from a fixed seed with a private CPU ``torch.Generator`` at construction,
  so every machine builds the same network without a file (tests/test_fid.py pins a fingerprint);
* any change to the design or the seed must change `RANDCONV_NAME`, because torch-fidelity keys
  its statistics cache on the extractor's name and would otherwise reuse stale statistics.

Design (for small images, 16..64 px, any size):

1. uint8 -> [-1, 1], resized to 64x64 (bilinear, antialiased when shrinking), so features do not
   depend on the input size and a 64 px study image is used at full detail.
2. A colour-layout thumbnail: the mean RGB of each cell of a 4x4 grid (48 features), scaled by
   1/4 (see below).
3. Four 3x3 conv + ReLU stages with 16, 32, 64 and 96 channels at 64, 32, 16 and 8 px (2x2 average
   pooling between stages), He-scaled Gaussian weights, no bias. The first stage's kernels are made
   zero-mean over their 3x3 window, so they are pure edge/texture (high-pass) filters: flat colour
   is the thumbnail's job. The spatial mean of every stage's channels is a feature (208 features):
   the first stage measures edge/noise energy (blur lowers it, noise raises it), later stages, with
   receptive fields up to ~30 px of the 64 px canvas, larger structure.

Both the zero-mean first stage and the 1/4 thumbnail weight were chosen by measurement on
procedurally drawn shapes (512 vs 512 at 32 px): they raised the shift caused by a gaussian blur of
sigma 1 or by noise of std 8/255 from ~6 and ~0.1 to ~37 standard deviations of the
same-distribution FID (over 4 draws), while colour and shape-size shifts stayed at ~100+ standard
deviations. Without them the thumbnail's sampling noise swamped texture changes.

48 + 208 = 256 features, so a few hundred to a thousand samples give a full-rank covariance
(>= 257 are needed for full rank). Random convolutional features are known to give a usable
distribution distance for small images; tests/test_fid.py checks that this one rises monotonically
with blur and with additive noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

RANDCONV_NAME = "randconv-256"
RANDCONV_DIM = 256
RANDCONV_LAYER = str(RANDCONV_DIM)  # torch-fidelity's name for the (only) feature layer

_SEED = 20_240_917  # fixed forever for this name; a new seed needs a new RANDCONV_NAME
_CANVAS = 64  # every input is resized to _CANVAS x _CANVAS
_THUMB = 4  # colour-layout grid
_THUMB_SCALE = 0.25  # thumbnail weight: its sampling noise would otherwise swamp texture features
_WIDTHS = (16, 32, 64, 96)  # conv stage channels
assert 3 * _THUMB * _THUMB + sum(_WIDTHS) == RANDCONV_DIM


def random_conv_weights(seed: int = _SEED) -> list[torch.Tensor]:
    """The stage weights, drawn on the CPU from a private generator (never the global RNG).

    He scaling (std sqrt(2 / fan_in)) keeps ReLU activations of the same order at every stage, so
    no stage's features dominate the distance just by their scale. The first stage's kernels are
    made zero-mean over their 3x3 window (high-pass: they see edges, texture and noise, not flat
    colour).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    weights = []
    in_ch = 3
    for out_ch in _WIDTHS:
        fan_in = in_ch * 3 * 3
        w = torch.randn(out_ch, in_ch, 3, 3, generator=gen, dtype=torch.float32)
        if in_ch == 3:
            w = w - w.mean(dim=(2, 3), keepdim=True)
        weights.append(w * (2.0 / fan_in) ** 0.5)
        in_ch = out_ch
    return weights


def randconv_features(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """(B, 3, H, W) uint8 images -> (B, 256) float64 features (see the module docstring)."""
    x = x.to(torch.float32) / 127.5 - 1.0
    if x.shape[-2:] != (_CANVAS, _CANVAS):
        # antialias only acts when shrinking; it keeps >64 px inputs from aliasing.
        x = F.interpolate(
            x, size=(_CANVAS, _CANVAS), mode="bilinear", align_corners=False, antialias=True
        )
    feats = [F.adaptive_avg_pool2d(x, _THUMB).flatten(1) * _THUMB_SCALE]
    h = x
    for i, w in enumerate(weights):
        if i > 0:
            h = F.avg_pool2d(h, 2)
        h = F.relu(F.conv2d(h, w, padding=1))
        feats.append(h.mean(dim=(2, 3)))
    # float64 so torch-fidelity's mean/covariance (numpy, dtype of the features) lose nothing.
    return torch.cat(feats, dim=1).to(torch.float64)


class RandConvFeatures(FeatureExtractorBase):
    """torch-fidelity feature extractor ``randconv-256`` (fixed random conv net, NOT Inception).

    FID computed with it is not comparable with Inception FID; see the module docstring.
    """

    def __init__(self, name: str, features_list: list[str], **kwargs):
        # torch-fidelity passes every calculate_metrics kwarg here (weights path, dtype, ...);
        # this network has no weights file, so they are ignored.
        super().__init__(name, features_list)
        for i, w in enumerate(random_conv_weights()):
            # buffers, not parameters: they follow .cuda() but are never trained.
            self.register_buffer(f"w{i}", w)
        self.requires_grad_(False)
        self.eval()

    def stage_weights(self) -> list[torch.Tensor]:
        return [getattr(self, f"w{i}") for i in range(len(_WIDTHS))]

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return (RANDCONV_LAYER,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        if metric not in ("fid", "kid", "prc"):
            # isc needs class logits, which a random network does not have.
            raise ValueError(f"{RANDCONV_NAME} does not support metric {metric!r}")
        return RANDCONV_LAYER

    @staticmethod
    def can_be_compiled() -> bool:
        return False  # four convolutions: nothing to gain from torch.compile

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, _CANVAS, _CANVAS, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
            raise ValueError(f"{RANDCONV_NAME} expects (B, 3, H, W) uint8 images, got {x.shape}")
        feats = randconv_features(x, self.stage_weights())
        # torch-fidelity wants one tensor per requested feature name, in order (only one here).
        return tuple(feats for _ in self.features_list)


def register() -> None:
    """Register ``randconv-256`` with torch-fidelity (idempotent: its registry refuses repeats)."""
    if RANDCONV_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(RANDCONV_NAME, RandConvFeatures)


register()
