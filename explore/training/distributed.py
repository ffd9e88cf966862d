"""One run on several processes (ranks): data-parallel training with torch.distributed.

    torchrun --nproc_per_node=4 -m explore.train model=lift ...    # one node, 4 GPUs
    python -m launch.study launcher=slurm launcher.gpus_per_node=4 launcher.tasks_per_node=4

`Ranks.from_environment` reads what torchrun (or submitit, for SLURM and study jobs: its
`TorchDistributedEnvironment`) puts in the environment (WORLD_SIZE, RANK, LOCAL_RANK,
MASTER_ADDR/PORT), checks it before anything is written and joins the process group (NCCL on
GPUs, gloo on the CPU). With WORLD_SIZE unset or 1 it is one process and nothing changes.

The run is the same whatever the rank count, up to the rounding of the gradient all-reduce:

- `trainer.batch_size` is the global batch: every rank reads the same permutation of (seed,
  epoch) and takes its slice of each batch (`slice`), and of each micro-batch with
  `trainer.grad_accum`;
- every random draw per sample (timesteps, noise) is made for the whole batch on every rank
  (and for every micro-batch) from the step's generator state, and each keeps its slice
  (`part`), so a rank's samples see what they would in a one-process run;
- so N ranks compute, slice for slice, what one process with `trainer.grad_accum=N` computes,
  and on the CPU with 2 ranks the two runs are bitwise equal (the all-reduce adds the two
  halves of the gradient as backward's accumulation does); a one-process run with
  `grad_accum=1` computes the gradient on the whole batch at once and differs by rounding,
  which grows over a run (docs/distributed.md);
- DistributedDataParallel averages the gradients, so every rank makes the same optimizer step
  and every average (EMA, power EMA, BEMA) updates from the same weights on every rank;
- the losses written to metrics.csv are the mean over ranks (`mean`), i.e. over the batch.

Rank 0 alone writes the run folder (and holds its lock); a check that fails on one rank before
training stops every rank (`agree`), and a rank that dies during training ends the others
(torchrun and srun stop the whole job when one process fails).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from explore.core.devices import DeviceError, parse_device, resolve_device
from explore.core.errors import ConfigError, UserError

TIMEOUT = datetime.timedelta(minutes=30)  # a rank waiting for another at a collective


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = "gloo"  # nccl on GPUs: its collectives take tensors on this rank's GPU

    @property
    def main(self) -> bool:
        """The rank that writes the run folder."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    # -- the data ---------------------------------------------------------------------------------
    def check_batch(self, batch_size: int, grad_accum: int) -> None:
        if batch_size % (self.world * grad_accum):
            raise ConfigError(
                f"trainer.batch_size={batch_size} (the global batch) does not split over "
                f"{self.world} ranks x trainer.grad_accum={grad_accum} micro-batches: use a "
                f"multiple of {self.world * grad_accum}")

    def slice(self, micro: torch.Tensor, start: int = 0, total: int | None = None
              ) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """This rank's share of a micro-batch that begins at `start` of a (global) batch of
        `total`, and its place in that batch (start, total) for the loss's random draws;
        (micro, None) when it is the whole batch."""
        total = len(micro) if total is None else total
        n = len(micro) // self.world
        if n == total:
            return micro, None
        mine = self.rank * n
        return micro[mine:mine + n], (start + mine, total)

    # -- agreeing -------------------------------------------------------------------------------
    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of `values` over the ranks (in place; returned)."""
        if self.distributed:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values /= self.world
        return values

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any rank (every rank gets the same answer)."""
        if not self.distributed:
            return bool(flag)
        value = self._tensor(1 if flag else 0)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def agree(self, error: BaseException | None) -> None:
        """Every rank passes here with what its checks raised (None: fine); if any failed,
        every rank raises (rank 0 and a failed rank their own error), none goes on."""
        if not self.distributed:
            if error is not None:
                raise error
            return
        failed = self._tensor(0 if error is None else 1 + self.rank)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if error is not None:
            raise error
        if int(failed):
            raise UserError(f"rank {int(failed) - 1} stopped before training: its error says "
                            f"why (above, or in its output)")

    def _tensor(self, value: int) -> torch.Tensor:
        device = f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"
        return torch.tensor([value], dtype=torch.int64, device=device)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    # -- starting ---------------------------------------------------------------------------------
    @classmethod
    def from_environment(cls, device_setting) -> tuple[Ranks, torch.device]:
        """The ranks torchrun or submitit started, joined, and this rank's device; one process
        (Ranks(), resolve_device(device_setting)) when there is no WORLD_SIZE > 1."""
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls(), resolve_device(device_setting)
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        asked = parse_device(device_setting)
        if asked not in ("auto", "cpu"):
            raise ConfigError(
                f"device={device_setting} with {world} ranks (torchrun or SLURM tasks): each "
                f"rank trains on the GPU of its LOCAL_RANK; drop device= (device=cpu: gloo on "
                f"the CPU)")
        if asked == "auto" and torch.cuda.is_available():
            count = torch.cuda.device_count()
            if local >= count:
                raise DeviceError(
                    f"rank {rank} has LOCAL_RANK {local}, but this node shows {count} GPU(s): "
                    f"start at most {count} processes per node (torchrun --nproc_per_node, "
                    f"launcher.tasks_per_node)")
            torch.cuda.set_device(local)
            device, backend = torch.device(f"cuda:{local}"), "nccl"
        else:
            device, backend = torch.device("cpu"), "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=TIMEOUT)
        return cls(rank=rank, world=world, local_rank=local, backend=backend), device
