"""The tiny sizes every test trains and evaluates at (a run takes seconds on one CPU core)."""

import csv

from explore.core.config import to_plain
from explore.training.settings import TrainSettings

# a two-level UNet on 16x16 images: LIFT ~0.03M parameters
TINY_MODEL = ["model.hidden_dims=[8,16]", "model.image_size=16", "model.attn_min_ch=16"]
TINY_DIMS = dict(hidden_dims=[8, 16], image_size=16, attn_min_ch=16)  # the same, as arguments
# a complete training config: 64 images, batch 16, 4 optimizer steps/epoch, 2 epochs; no sample
# grid (the smoke preset draws one every epoch, which at this size costs more than the training:
# a test about grids asks for one with trainer.sample_every=N)
TINY_TRAIN = ["experiment=smoke", "device=cpu", *TINY_MODEL, "data.num_images=64",
              "trainer.batch_size=16", "trainer.epochs=2", "trainer.progress=false",
              "trainer.sample_every=0", "trainer.sample_steps=4"]
# an evaluation that still runs every stage (DP paths on a 4x4 heatmap, FID on 24 images)
# (no bootstrap replicates unless a test asks for them: eval.bootstrap=N)
TINY_EVAL = ["device=cpu", "progress=false", "eval.num_images=24", "eval.num_steps=4",
             "eval.batch_size=12", "eval.heatmap.grid_size=4", "eval.heatmap.num_probes=1",
             "eval.heatmap.num_images=2", "eval.fid.extractor=randconv-256", "eval.bootstrap=0"]


def settings(cfg) -> TrainSettings:
    """The typed settings explore.train hands down, of a composed training config."""
    return TrainSettings.from_config(to_plain(cfg))


def rows(path) -> list[dict]:
    """The rows of a run's CSV file (fid.csv, metrics.csv) as dicts of strings."""
    with open(path) as f:
        return list(csv.DictReader(f))
