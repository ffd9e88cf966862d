"""Model sizes the benchmarks build: the study's reference UNet and the smoke experiment's."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from explore.nets.models import BaselineUNet, LiftUNet

REFERENCE = (64, 128, 256, 512)


@dataclass(frozen=True)
class ModelSize:
    """A UNet size: hidden dims, image size (the high scale), attention from this many channels."""

    hidden_dims: tuple[int, ...] = REFERENCE
    image_size: int = 64
    attn_min_ch: int = 128

    def overrides(self) -> list[str]:
        dims = ",".join(str(d) for d in self.hidden_dims)
        return [f"model.hidden_dims=[{dims}]", f"model.image_size={self.image_size}",
                f"model.attn_min_ch={self.attn_min_ch}"]

    def build(self, kind: str) -> torch.nn.Module:
        cls = BaselineUNet if kind == "baseline" else LiftUNet
        return cls(hidden_dims=list(self.hidden_dims), image_size=self.image_size,
                   attn_min_ch=self.attn_min_ch)

    def describe(self) -> str:
        dims = "x".join(str(d) for d in self.hidden_dims)
        ref = " (reference)" if self == ModelSize() else ""
        return f"dims {dims}, {self.image_size}px{ref}"


SMOKE = ModelSize((16, 32), 32, 64)  # conf/experiment/smoke.yaml's model
