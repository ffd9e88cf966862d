"""What made a run: the software and machine a training start or an evaluation ran in.

The first question of anyone comparing two runs months apart is "what was different?". Every
training start writes this record into `run.json` (`environment`, and every distinct one that
trained the run in `environments`), and every evaluation row names the `environment` it was
made in (its record in `eval/environments.json`), so the report can say when the numbers of one
table come from different software.

    record = describe_environment(device)      # {"python": "3.11.7", "torch": "2.14.1", ...}
    record["id"]                               # "env-1a2b3c4d": same id, same number-shaping set

The id hashes only what shapes numbers (python, torch and its CUDA/cuDNN, the device model, the
packages below, the harness's commit and whether its tree was dirty), not the host name or the
command: two identical nodes of a cluster make the same environment.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

# the packages whose versions shape the numbers (sampling, features, statistics)
PACKAGES = ("torch", "torchvision", "torch-fidelity", "numpy", "scipy")
# the fields that make two environments different for the numbers (the id hashes these)
SHAPING = ("python", "torch", "cuda", "cudnn", "device_name", "packages", "git_commit",
           "git_dirty")
REPO = Path(__file__).resolve().parents[2]  # the harness checkout


def describe_environment(device: torch.device | str | None = None) -> dict:
    """The record of this process: versions, device, host, the harness's git commit, the
    command line; `device`: the device the work runs on (its model is recorded)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    on_gpu = device.type == "cuda" and torch.cuda.is_available()
    commit, dirty = git_state(REPO)
    record = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "cuda": str(torch.version.cuda) if on_gpu else None,  # the runtime torch was built with
        "cudnn": torch.backends.cudnn.version() if on_gpu else None,
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if on_gpu else cpu_model()),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": {name: package_version(name) for name in PACKAGES},
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
    }
    record["id"] = environment_id(record)
    return record


def environment_id(record: dict) -> str:
    """A short id of the number-shaping part of a record (SHAPING)."""
    shaping = {k: record.get(k) for k in SHAPING}
    digest = hashlib.sha1(json.dumps(shaping, sort_keys=True).encode()).hexdigest()
    return f"env-{digest[:8]}"


def differences(old: dict, new: dict) -> list[str]:
    """The number-shaping fields that differ, as "field: old -> new"."""
    out = []
    for key in SHAPING:
        a, b = old.get(key), new.get(key)
        if key == "packages":
            a, b = a or {}, b or {}
            out += [f"{name}: {a.get(name)} -> {b.get(name)}" for name in sorted({*a, *b})
                    if a.get(name) != b.get(name) and name != "torch"]
        elif a != b:
            out.append(f"{key}: {a} -> {b}")
    return out


def describe(record: dict) -> str:
    """One line: "torch 2.14.1 (CUDA 12.4, cuDNN 90100), python 3.11.7, NVIDIA H200, commit
    1a2b3c4 (dirty)"."""
    cuda = (f" (CUDA {record['cuda']}, cuDNN {record['cudnn']})" if record.get("cuda") else "")
    commit = record.get("git_commit")
    where = (f"commit {commit[:7]}{' (dirty)' if record.get('git_dirty') else ''}" if commit
             else "no git commit")
    return (f"torch {record.get('torch')}{cuda}, python {record.get('python')}, "
            f"{record.get('device_name')}, {where}")


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; platform.processor() elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_state(root: Path) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether tracked files differ from it) of the checkout at `root`; (None,
    None) for an installed copy without its repository, or without git."""
    if not (root / ".git").exists():
        return None, None
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # a status must not take git's index lock
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], env=env,
                              capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                 "--untracked-files=no"], env=env, capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None, None
    if head.returncode != 0:
        return None, None
    return head.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None
