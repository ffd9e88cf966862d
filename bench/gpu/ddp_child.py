"""One rank of the GPU check's data-parallel step, started by torchrun:

    torchrun --standalone --nproc_per_node=N -m bench.gpu.ddp_child OUT.json --device cuda|cpu
        --kind lift --per-rank 64 --warmup 3 --steps 10 [--smoke] [-- TRAIN OVERRIDES]

Builds the run's own Training with N ranks (explore.training.distributed: DDP, the global batch
split over the ranks) and times `train_step` on a fixed global batch of per-rank x N images;
rank 0 writes {ranks, global_batch, seconds, images_per_s} to OUT.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(prog="python -m bench.gpu.ddp_child")
    p.add_argument("out")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--kind", default="lift")
    p.add_argument("--per-rank", type=int, default=64)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="the smoke model size (CPU mode)")
    args = p.parse_args(argv[:cut])
    import torch

    from explore.core.config import to_plain
    from explore.core.files import atomic_write
    from explore.training.distributed import Ranks
    from explore.training.settings import TrainSettings
    from explore.training.step import build_training, epoch_generators, train_step

    from ..common.sizes import SMOKE, ModelSize
    from ..common.training import random_batch, train_config

    ranks, device = Ranks.from_environment("auto" if args.device == "cuda" else "cpu")
    size = SMOKE if args.smoke else ModelSize()
    batch = args.per_rank * ranks.world
    cfg = train_config(args.kind, size, device, batch=batch, extra=argv[cut + 1:])
    torch.manual_seed(0)
    training = build_training(TrainSettings.from_config(to_plain(cfg)), device,
                              total_steps=10**9, ranks=ranks)
    images = random_batch(batch, size.image_size, device)
    gen = epoch_generators(0, 1, device)[1]
    training.model.train()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ranks.barrier()

    for _ in range(args.warmup):
        train_step(training, images, gen)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        train_step(training, images, gen)
    sync()
    seconds = time.perf_counter() - t0
    if ranks.main:
        result = {"ranks": ranks.world, "global_batch": batch, "per_rank": args.per_rank,
                  "steps": args.steps, "seconds": round(seconds, 4),
                  "images_per_s": round(args.steps * batch / seconds, 3),
                  "backend": ranks.backend, "device": str(device)}
        atomic_write(args.out, lambda f: f.write(json.dumps(result).encode()))
    ranks.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
