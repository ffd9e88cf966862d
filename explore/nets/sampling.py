"""DDIM sampling (eta 0) for both models, as STUDY.md "Sampling" describes it.

18 steps = timesteps 990, 935, ..., 55, 0 (stride 1000 // 18 = 55): 19 model calls in the list,
each stepping from its timestep to the next one. The predicted x_0 is clipped to [-1, 1] and the
direction term uses the eps re-derived from the clipped x_0.

The last call (`final_step`):

- ``study`` (default, as the original): it steps from 0 to 0. A DDIM step between equal
  timesteps is the identity whatever eps is: with a = alpha_bar_0, x0c = clip((x - sqrt(1-a)
  eps) / sqrt(a)) and eps' = (x - sqrt(a) x0c) / sqrt(1-a), the step returns
  sqrt(a) x0c + sqrt(1-a) eps' = x. So that call is skipped (18 model calls, not 19) and the
  images are the output of the step 55 -> 0: about sqrt(1 - alpha_bar_0) = 1% of eps is left
  in them and no last clip is applied (`to_uint8` clamps when making pixels).
- ``alpha_one``: it steps from 0 to alpha_bar = 1, returning the clipped x_0 prediction (this
  harness's behaviour before the study's was found; 19 model calls).

LIFT takes a 19-point path of (t_64, t_32) pairs; each scale takes its own DDIM step to its next
timestep. The `diagonal` path is the plain list for both scales; `dp_64` and `dp_total` come
from the error heatmap (explore.dp_path).

One seed gives the same images whatever the batch size: image i's starting noise is drawn from a
generator seeded with (seed, i).

Speed: on the CPU the samplers run the model in the channels-last (NHWC) memory layout, whose
oneDNN convolution kernels were 1.3-1.5x faster than NCHW for the study's UNets on a 2-core Xeon
(`python -m bench`). The weights are swapped for NHWC copies during the call and put back
after (the caller's tensors are untouched); the numbers differ from NCHW only by float rounding.
`channels_last=False` turns it off; on a GPU it is off unless asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from explore.core.devices import use_channels_last
from explore.nets.data import to_uint8
from explore.nets.diffusion import CosineSchedule

LiftPath = Sequence[tuple[int, int]]
FINAL_STEPS = ("study", "alpha_one")


def check_final_step(final_step: str) -> str:
    if final_step not in FINAL_STEPS:
        raise ValueError(f"final_step={final_step!r}: use one of {list(FINAL_STEPS)} (study: "
                         f"the last call steps 0 -> 0 as the original; alpha_one: to "
                         f"alpha_bar = 1, the clipped x0 prediction)")
    return final_step


def ddim_timesteps(num_steps: int = 18, num_train_steps: int = 1000) -> list[int]:
    """range(0, T, T // num_steps), noisiest first: [990, 935, ..., 55, 0] for 18 steps.

    That is 19 model calls for 18 steps (1000 is not a multiple of 18), as in the study; for a
    divisor of T, e.g. 10 steps, it is [900, ..., 0]: 10 calls.
    """
    if not 1 <= num_steps < num_train_steps:
        raise ValueError(f"num_steps={num_steps} must be in [1, {num_train_steps - 1}]")
    stride = num_train_steps // num_steps
    return list(range(0, num_train_steps, stride))[::-1]


def diagonal_path(num_steps: int = 18, num_train_steps: int = 1000) -> list[tuple[int, int]]:
    return [(t, t) for t in ddim_timesteps(num_steps, num_train_steps)]


def _alpha_pairs(schedule: CosineSchedule, timesteps: Sequence[int], device,
                 final_step: str = "study") -> torch.Tensor:
    """(len, 2): alpha_bar at each timestep and at the next one; after the last, the last
    itself (study: a step 0 -> 0) or 1.0 (alpha_one)."""
    ab = schedule.alpha_bar.to(torch.float64)
    now = torch.stack([ab[t] for t in timesteps])
    last = now[-1:] if check_final_step(final_step) == "study" else torch.ones(1, dtype=now.dtype)
    nxt = torch.cat([now[1:], last])
    return torch.stack([now, nxt], 1).to(device=device, dtype=torch.float32)


def model_calls(num_points: int, final_step: str) -> int:
    """Model calls of a path of `num_points` timesteps: the study's last call 0 -> 0 is the
    identity (module docstring) and is skipped."""
    return num_points - 1 if check_final_step(final_step) == "study" else num_points


def ddim_step(x: torch.Tensor, eps: torch.Tensor, ab: torch.Tensor, ab_next: torch.Tensor
              ) -> torch.Tensor:
    """x_t -> x_next with eta 0.

    x0 = (x - sqrt(1-ab) eps) / sqrt(ab), clipped to [-1, 1]; eps is then re-derived from the
    clipped x0 (as the original study's DDIM scheduler does), and x_next = sqrt(ab_next) x0 +
    sqrt(1 - ab_next) eps.
    """
    eps = eps.float()
    x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp_(-1, 1)
    eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
    return ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps


def initial_noise(shape: Sequence[int], start: int, count: int, seed: int,
                  stream: int = 0) -> torch.Tensor:
    """Noise for images start..start+count-1, each from its own (seed, index, stream) generator.

    Drawn on the CPU so that a seed gives the same images on every device and batch size.
    """
    g = torch.Generator()
    out = torch.empty(count, *shape)
    for k in range(count):
        g.manual_seed((int(seed) * 1_000_003 + (start + k)) * 4 + stream)
        out[k] = torch.randn(*shape, generator=g)
    return out


@contextlib.contextmanager
def _channels_last_weights(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Inside the block the model's 4-D weights are NHWC copies; the originals come back after.

    Swapping `.data` (not `model.to(memory_format=...)`) restores the caller's exact tensors, so
    whatever layout they had, and references held elsewhere (optimizer, EMA), stay valid.
    """
    saved = []
    if enabled:
        for t in [*model.parameters(), *model.buffers()]:
            if t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last):
                saved.append((t, t.data))
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for t, data in saved:
            t.data = data


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _batches(total: int, batch_size: int):
    for start in range(0, total, batch_size):
        yield start, min(batch_size, total - start)


@torch.no_grad()
def sample_baseline(model: nn.Module, schedule: CosineSchedule, num_images: int, *,
                    num_steps: int = 18, seed: int = 0, batch_size: int = 64,
                    device: torch.device | str = "cpu", autocast_dtype=None,
                    progress: bool = True, channels_last: bool | None = None,
                    final_step: str = "study") -> torch.Tensor:
    """uint8 (N, 3, S, S) images from the Baseline with DDIM (CPU tensor).

    channels_last: run the model in NHWC; None = on the CPU only (see the module docstring).
    final_step: study | alpha_one (see the module docstring).
    """
    timesteps = ddim_timesteps(num_steps, schedule.num_steps)
    alphas = _alpha_pairs(schedule, timesteps, device, final_step)
    calls = model_calls(len(timesteps), final_step)
    s, c = model.image_size, model.channels
    nhwc = use_channels_last(channels_last, device)
    out = []
    with _channels_last_weights(model, nhwc):
        for start, n in _progress(num_images, batch_size, progress, "sampling"):
            x = _layout(initial_noise((c, s, s), start, n, seed).to(device), nhwc)
            for k, t in enumerate(timesteps[:calls]):
                tt = torch.full((n,), t, device=device, dtype=torch.long)
                with _autocast(device, autocast_dtype):
                    eps = model(x, tt)
                x = ddim_step(x, eps, alphas[k, 0], alphas[k, 1])
            out.append(to_uint8(x).cpu().contiguous())
    return torch.cat(out) if out else torch.empty(0, c, s, s, dtype=torch.uint8)


@torch.no_grad()
def sample_lift(model: nn.Module, schedule: CosineSchedule, num_images: int, path: LiftPath, *,
                seed: int = 0, batch_size: int = 64, device: torch.device | str = "cpu",
                autocast_dtype=None, progress: bool = True,
                return_low: bool = False, channels_last: bool | None = None,
                final_step: str = "study"):
    """uint8 (N, 3, S, S) images from LIFT along `path` = [(t_64, t_32), ...] (CPU tensor).

    With return_low, also the (N, 3, S/2, S/2) low-scale images. channels_last: run the model in
    NHWC; None = on the CPU only (see the module docstring). final_step: study | alpha_one; a
    path ends at (0, 0), so under `study` both scales' last step is 0 -> 0 and is skipped.
    """
    path = [(int(a), int(b)) for a, b in path]
    if path[-1] != (0, 0):
        raise ValueError(f"a LIFT path must end at (0, 0) (clean at both scales), got {path[-1]}")
    t_hi, t_lo = [p[0] for p in path], [p[1] for p in path]
    a_hi = _alpha_pairs(schedule, t_hi, device, final_step)
    a_lo = _alpha_pairs(schedule, t_lo, device, final_step)
    calls = model_calls(len(path), final_step)
    s, c = model.image_size, model.channels
    nhwc = use_channels_last(channels_last, device)
    hi_out, lo_out = [], []
    with _channels_last_weights(model, nhwc):
        for start, n in _progress(num_images, batch_size, progress, "sampling"):
            x_hi = _layout(initial_noise((c, s, s), start, n, seed, stream=0).to(device), nhwc)
            x_lo = _layout(initial_noise((c, s // 2, s // 2), start, n, seed, stream=1).to(device),
                           nhwc)
            for k in range(calls):
                th = torch.full((n,), t_hi[k], device=device, dtype=torch.long)
                tl = torch.full((n,), t_lo[k], device=device, dtype=torch.long)
                with _autocast(device, autocast_dtype):
                    eps_hi, eps_lo = model(x_hi, x_lo, th, tl)
                x_hi = ddim_step(x_hi, eps_hi, a_hi[k, 0], a_hi[k, 1])
                x_lo = ddim_step(x_lo, eps_lo, a_lo[k, 0], a_lo[k, 1])
            hi_out.append(to_uint8(x_hi).cpu().contiguous())
            if return_low:
                lo_out.append(to_uint8(x_lo).cpu().contiguous())
    hi = torch.cat(hi_out)
    return (hi, torch.cat(lo_out)) if return_low else hi


def _autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def _progress(total: int, batch_size: int, enabled: bool, desc: str):
    from tqdm import tqdm

    batches = list(_batches(total, batch_size))
    bar = tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False,
               dynamic_ncols=True)
    for start, n in batches:
        yield start, n
        bar.update(n)
    bar.close()
