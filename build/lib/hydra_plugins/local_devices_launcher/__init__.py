"""`hydra/launcher=local_devices`: Hydra multiruns in parallel, one job per device.

    python -m explore.train -m model=baseline,lift ema.decay=0.999,0.9999 \
        hydra/launcher=local_devices
    python -m explore.train -m model=baseline,lift hydra/launcher=local_devices \
        hydra.launcher.devices=[0,1]

Each job runs as a submitit LocalExecutor job on its own slot of `launch.pool.DeviceQueue`
(one GPU, seen as cuda:0 through CUDA_VISIBLE_DEVICES, or a share of the CPU cores), and jobs
queue when there are more jobs than slots. A job's own `device=N` pins it to GPU N. See
launch/pool.py.
"""

from .config import LocalDevicesConf  # noqa: F401  (registers hydra/launcher=local_devices)
