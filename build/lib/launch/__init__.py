"""Running many jobs: local devices in parallel (submitit LocalExecutor), SLURM."""
