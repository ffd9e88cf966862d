"""Watching a run while it trains: each epoch's metrics row goes to the loggers
(explore.run.loggers), and every `trainer.sample_every` epochs (and after the last) the same
`trainer.sample_images` noises are sampled with the raw weights and with each tracked EMA, drawn
side by side and labelled in <run>/samples/epoch_NNNN.png, and handed to the loggers.

    with Watch(settings, run, training, steps_per_epoch) as watch:   # opens the loggers
        for epoch in ...:
            ...
            watch.end_epoch(epoch, row, state.step)

The seed documents' users judge an EMA by looking: an EMA that is still mostly its initial
weights hides what training achieved (seed 004), so each EMA panel states its share of trained
weights and its lag, and says so in red below `EMA_SHARE_LOW`.

Sampling is DDIM with `trainer.sample_steps` steps from the sampler's own seeded noise
(`trainer.sample_seed`; 42 = explore.evaluate's eval.seed, so the grid shows the first images of
evaluation's grids), in eval mode, with the global RNG forked: it draws nothing from training's
random streams, and the model is back in train mode with its raw weights afterwards, so a
resumed run stays bit-identical. LIFT follows its diagonal path unless evaluation has cached a
heatmap for this run (explore.lift.paths.cached_dp_total). Sampling runs outside the epoch's
timer: metrics.csv's seconds and images/s are training alone; its cost is in train.log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass

import torch

from explore.core.files import atomic_write
from explore.ema.names import EMA_SHARE_LOW, fmt_value
from explore.lift.paths import cached_dp_total
from explore.nets.data import grid_image
from explore.nets.sampling import diagonal_path, sample_baseline, sample_lift
from explore.run.folder import RunFolder
from explore.run.loggers import RunLoggers, open_loggers
from explore.training.settings import TrainSettings
from explore.training.step import Training

log = logging.getLogger("explore.train")

MIN_PANEL_PX = 256   # small images are scaled up (nearest) so labels and samples stay readable
IMAGE_NAME = "samples"  # the image's name in the loggers


@dataclass
class Panel:
    weights: str                  # weight-set name as explore.evaluate writes it: raw, ema, ...
    images: torch.Tensor          # uint8 (N, 3, S, S)
    lines: list[str]              # the label: a title, then details
    warning: str = ""             # drawn in red
    share: float | None = None    # EMA: share of trained (post-init) weights


class Watch:
    """The per-epoch hand-over of one training run to its loggers and sample grids."""

    def __init__(self, settings: TrainSettings, run: RunFolder, training: Training,
                 steps_per_epoch: int):
        t = settings.trainer
        self.settings, self.run, self.training = settings, run, training
        self.spe = int(steps_per_epoch)
        self.every, self.num_steps = int(t.sample_every), int(t.sample_steps)
        self.count, self.seed = int(t.sample_images), int(t.sample_seed)
        self.epochs, self.max_jump = int(t.epochs), int(settings.max_jump)
        self.loggers = RunLoggers()

    def __enter__(self) -> Watch:
        self.loggers = open_loggers(self.settings.logger, self.run.path, "train")
        if self.loggers:
            self.loggers.log_params(flat_params(self.settings.config))
        return self

    def __exit__(self, kind, value, tb) -> None:
        # an error failed the run; a stop (Ctrl-C, SLURM's requeue) only pauses it
        self.loggers.close(failed=kind is not None and issubclass(kind, Exception))

    def sample_due(self, epoch: int) -> bool:
        return self.every > 0 and (epoch % self.every == 0 or epoch == self.epochs)

    def end_epoch(self, epoch: int, row: dict, step: int) -> None:
        """The epoch's scalars to the loggers; its sample grid when due."""
        self.loggers.log_epoch(epoch, row)
        if not self.sample_due(epoch):
            return
        t0 = time.perf_counter()
        try:
            panels = sample_panels(self.training, self.run, epoch, self.spe, self.num_steps,
                                   self.count, self.seed, self.max_jump)
            image, boxes = draw_grid(panels, f"{self.run.name}   epoch {epoch}, step {step}")
            save_png(image, self.run.samples(epoch), {"epoch": epoch, "step": step,
                                                      "panels": boxes})
        except Exception as e:  # noqa: BLE001 - a picture never stops a training run
            log.warning("sample grid of epoch %d failed (%s: %s): no more sample grids in this "
                        "run; training goes on", epoch, type(e).__name__, e)
            self.every = 0
            return
        seconds = time.perf_counter() - t0
        epoch_s = float(row.get("seconds") or 0)
        log.info("samples %s: %d weight set(s) x %d images x %d DDIM steps, %.1f s (%.0f%% of "
                 "the epoch's %.1f s of training)", self.run.samples(epoch).name, len(panels),
                 self.count, self.num_steps, seconds, 100 * seconds / max(epoch_s, 1e-9),
                 epoch_s)
        self.loggers.log_image(IMAGE_NAME, epoch, image)
        self.loggers.log_scalars(epoch, {"train/sample_seconds": seconds})


def flat_params(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"model": {"hidden_dims": [16, 32]}} -> {"model.hidden_dims": "[16, 32]"}."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, name + "."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


# -- sampling ---------------------------------------------------------------------------------
def weight_sets(ema) -> list[tuple[str, object]]:
    """(weight-set name, track) of raw and every tracked average, named as explore.evaluate
    names them: the primary exponential EMA is `ema`, the others ema@<decay>, phema@<s>."""
    sets: list[tuple[str, object]] = [("raw", None)]
    if ema is None:
        return sets
    primary = ema.primary
    for track in [primary] + [t for t in ema.tracks if t is not primary]:
        sets.append(("ema" if track is primary and track.kind == "ema" else track.name, track))
    return sets


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def sample_panels(training: Training, run: RunFolder, epoch: int, steps_per_epoch: int,
                  num_steps: int, count: int, seed: int, max_jump: int = 5) -> list[Panel]:
    """One panel per weight set: `count` images from the same noises. The model is in eval mode
    and the global RNG forked while sampling; train mode and the raw weights come back after."""
    model = training.model
    was_training = model.training
    model.eval()
    panels = []
    try:
        with torch.random.fork_rng(devices=_rng_devices(training.device)):
            for name, track in weight_sets(training.ema):
                with track.average_parameters() if track is not None else \
                        contextlib.nullcontext():
                    images, how = _sample(training, run, name, epoch, num_steps, count, seed,
                                          max_jump)
                panels.append(_panel(name, track, images, how, steps_per_epoch))
    finally:
        model.train(was_training)
    return panels


def _sample(training: Training, run: RunFolder, weights: str, epoch: int, num_steps: int,
            count: int, seed: int, max_jump: int) -> tuple[torch.Tensor, str]:
    common = dict(seed=seed, batch_size=count, device=training.device, progress=False,
                  autocast_dtype=training.autocast_dtype, channels_last=training.channels_last)
    model, schedule = training.model, training.schedule
    if model.kind == "baseline":
        images = sample_baseline(model, schedule, count, num_steps=num_steps, **common)
        return images, f"DDIM, {num_steps} steps"
    found = cached_dp_total(run.heatmaps_dir, schedule.name, weights, epoch, num_steps,
                            max_jump)
    path, how = found if found is not None else (diagonal_path(num_steps), "diagonal path")
    return sample_lift(model, schedule, count, path, **common), f"LIFT {how}, {num_steps} steps"


def _panel(name: str, track, images: torch.Tensor, how: str, steps_per_epoch: int) -> Panel:
    if track is None:
        return Panel(name, images, ["raw weights", "what the optimizer made", how])
    share = float(track.share_post_init)
    lag = float(track.window_steps) / max(steps_per_epoch, 1)
    if track.kind == "bema":  # its bias term removes the lag: say what its parts weigh
        lines = ["BEMA (bias-corrected EMA)", f"mu window {lag:.3g} epochs, bias weight "
                 f"{track.last_alpha:.3f} on (raw - initial)", how]
        return Panel(name, images, lines, "", share)
    title = (f"EMA {fmt_value(track.decay)}" if track.kind == "ema"
             else f"power EMA sigma_rel {fmt_value(track.sigma_rel)}")
    lines = [title, f"EMA share {share:.2f} (trained weights), lag {lag:.3g} epochs", how]
    warning = (f"mostly initial weights: {100 * (1 - share):.0f}% of it is the initialisation"
               if share < EMA_SHARE_LOW else "")
    return Panel(name, images, lines, warning, share)


# -- the picture ------------------------------------------------------------------------------
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


def draw_grid(panels: list[Panel], title: str) -> tuple[object, list[dict]]:
    """The panels side by side under their labels, and where each sample grid lies in the
    picture ([{"weights", "box": [x0, y0, x1, y1]}], also stored in the PNG)."""
    from PIL import Image, ImageDraw

    grids = [grid_image(p.images) for p in panels]  # (3, H, W) uint8, square-ish
    gh, gw = grids[0].shape[1:]
    scale = max(1, math.ceil(MIN_PANEL_PX / gw))
    font, bold = _font(13), _font(15)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(probe.textlength(line, font=font) for p in panels
                 for line in [*p.lines, p.warning])
    line_h, pad, gap = 17, 8, 12
    panel_w = int(max(gw * scale, text_w + 2))
    head_lines = max(len(p.lines) + (1 if p.warning else 0) for p in panels)
    top = pad + 22                        # the title line
    grid_top = top + head_lines * line_h + pad
    width = 2 * pad + len(panels) * panel_w + (len(panels) - 1) * gap
    height = grid_top + gh * scale + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), title, fill="black", font=bold)
    boxes = []
    for k, (panel, grid) in enumerate(zip(panels, grids)):
        x = pad + k * (panel_w + gap)
        for i, line in enumerate(panel.lines):
            draw.text((x, top + i * line_h), line, fill="black", font=bold if i == 0 else font)
        if panel.warning:
            draw.text((x, top + len(panel.lines) * line_h), panel.warning, fill=(200, 0, 0),
                      font=font)
        img = Image.fromarray(grid.permute(1, 2, 0).numpy())
        if scale > 1:
            img = img.resize((gw * scale, gh * scale), Image.NEAREST)
        gx = x + (panel_w - gw * scale) // 2
        canvas.paste(img, (gx, grid_top))
        boxes.append({"weights": panel.weights,
                      "box": [gx, grid_top, gx + gw * scale, grid_top + gh * scale]})
    return canvas, boxes


def save_png(image, path, meta: dict) -> None:
    """Written atomically; `meta` as JSON in the PNG's text chunks (key `watch`)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("watch", json.dumps(meta))
    atomic_write(path, lambda f: image.save(f, format="png", pnginfo=info))
