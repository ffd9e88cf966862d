"""The machine a benchmark ran on: the record `run.json` keeps of a training start
(`explore.run.environment.describe_environment`: versions, device, host, commit, command), plus
what a timing needs besides: the CPU, its core count, the GPU and the load average."""

from __future__ import annotations

import os

import torch

from explore.run.environment import cpu_model, describe_environment


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, None where the platform has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def describe_machine(device: torch.device) -> dict:
    """`describe_environment(device)` with cpu (model name), cpu_count, usable_cpus (where the
    platform says), gpu (the device's name on CUDA, else None) and load_average (now)."""
    info = {**describe_environment(device), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "load_average": load_average()}
    if hasattr(os, "sched_getaffinity"):
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    return info
