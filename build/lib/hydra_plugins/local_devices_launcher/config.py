"""Config node of the local_devices launcher (registered in Hydra's ConfigStore on import;
Hydra imports every module under the hydra_plugins namespace when it starts)."""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class LocalDevicesConf:
    _target_: str = "hydra_plugins.local_devices_launcher.launcher.LocalDevicesLauncher"
    # GPU indices ([0,1]), "cpu", or null: from the app's `device` (auto: every visible GPU,
    # else the CPU). A job's own device=N pins it to GPU N.
    devices: Any | None = None
    # on a CPU: jobs at once (null: one per two cores), the cores shared between them
    cpu_jobs: int | None = None
    # submitit's job folders (pickles, stdout/stderr of each job)
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    timeout_min: int = 43200
    poll_s: float = 1.0


ConfigStore.instance().store(group="hydra/launcher", name="local_devices",
                             node=LocalDevicesConf, provider="local_devices_launcher")
