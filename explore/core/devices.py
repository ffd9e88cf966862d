"""Turning `device=auto|cpu|N|cuda:N` into a torch.device, once, with errors that explain."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from explore.core.errors import UserError

if TYPE_CHECKING:  # (imported where a device is resolved: `import launch.pool` stays light)
    import torch


class DeviceError(UserError):
    pass


def parse_device(spec) -> str | int:
    """"auto", "cpu" or a GPU index, from auto | cpu | N | cuda | cuda:N (any case, None =
    auto). The one parser of device settings: `resolve_device`, the study's device pool and the
    local_devices launcher all read `device=` through it."""
    text = str(spec).strip().lower() if spec is not None else "auto"
    if text in ("auto", "cpu"):
        return text
    if text == "":
        return "auto"
    index = "0" if text == "cuda" else text.removeprefix("cuda:")
    if not index.isdigit():
        raise DeviceError(f"device={spec!r} is not understood: use auto, cpu, a GPU index "
                          f"like 0, or cuda:0")
    return int(index)


def resolve_device(spec) -> torch.device:
    """auto: the first visible GPU, else the CPU. An explicit GPU that is not there is an error,
    never a silent fall-back to the CPU (a study that should take days on a GPU would quietly
    take years)."""
    import torch  # here, not at the top: the device pool and its job processes parse devices

    parsed = parse_device(spec)
    if parsed == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if parsed == "cpu":
        return torch.device("cpu")
    index = parsed
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    mask_note = (f" (CUDA_VISIBLE_DEVICES={mask!r} masks the machine's GPUs: inside a job given "
                 f"one GPU, that GPU is device=0)" if mask is not None else "")
    if not torch.cuda.is_available():
        raise DeviceError(f"device={spec!r} asks for GPU {index}, but this process sees no GPU "
                          f"(torch {torch.__version__}, CUDA available: False){mask_note}. "
                          f"Use device=cpu or device=auto.")
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"device={spec!r} asks for GPU {index}, but this process sees "
                          f"{count} GPU(s): valid are 0..{count - 1}{mask_note}")
    return torch.device(f"cuda:{index}")


def use_channels_last(channels_last: bool | None, device) -> bool:
    """NHWC layout? None: on the CPU only (where it measured faster: `python -m bench`,
    training 1.4x and sampling 1.25x at the reference size); True/False: as asked."""
    if channels_last is None:
        import torch

        return torch.device(device).type == "cpu"
    return bool(channels_last)
