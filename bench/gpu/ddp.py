"""Step 6 of the GPU check: one run on several GPUs (data-parallel, explore.training.distributed).

Training images/s at the reference size with 1 rank and with N ranks (every visible GPU, at
most 8), started by torchrun as a user starts a run (`torchrun --standalone --nproc_per_node=N
-m explore.train ...`), each rank with the study's batch of 64 (weak scaling: the global batch
grows with N); per-GPU throughput at N against 1 is the scaling efficiency. With fewer than two
GPUs it is skipped, and said so; on the CPU (the scaled-down check) 1 and 2 gloo ranks at smoke
size run instead, which tests the code path (their rates mean nothing for a GPU).
"""

from __future__ import annotations

import json
import sys
import time

from .context import Outcome
from .resume import child_env, run_process

MAX_RANKS = 8


def step_ddp(ctx) -> Outcome:
    plan, res = ctx.plan, ctx.result
    gpus = ctx.check.gpus_visible() if plan.cuda else 0
    if plan.cuda and gpus < 2:
        return "skipped", f"{gpus} GPU visible: data-parallel training needs 2 or more"
    ranks = min(gpus, MAX_RANKS) if plan.cuda else 2
    work = ctx.out / "work" / "ddp"
    work.mkdir(parents=True, exist_ok=True)
    per_rank = plan.train_batch_bench
    res.update(ranks=[1, ranks], per_rank_batch=per_rank, model="lift",
               precision="bf16" if plan.cuda else "32",
               command=f"torchrun --standalone --nproc_per_node=N -m bench.gpu.ddp_child "
                       f"... (N = 1, {ranks})")
    rates = {}
    for n in (1, ranks):
        ctx.need(20 if plan.cuda else 10, f"a {n}-rank training")
        out = work / f"ranks_{n}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={n}", "-m", "bench.gpu.ddp_child", str(out),
               "--device", plan.kind, "--per-rank", str(per_rank),
               "--warmup", str(plan.train_warmup), "--steps", str(plan.train_reps)]
        cmd += [] if plan.cuda else ["--smoke"]
        cmd += ["--", "trainer.precision=bf16"] if plan.cuda else []
        record = res.setdefault("processes", {}).setdefault(f"ranks_{n}", {})
        t0 = time.monotonic()
        code, _ = run_process(cmd, work / f"ranks_{n}.log", ctx, f"the {n}-rank training",
                              child_env(plan.device), record)
        if code != 0:
            return "fail", f"the {n}-rank training failed (exit {code}): see {work}/ranks_{n}.log"
        rates[n] = json.loads(out.read_text())
        res[f"ranks_{n}"] = {**rates[n], "wall_s": round(time.monotonic() - t0, 1)}
        ctx.done(f"{n} rank(s)")
    one = rates[1]["images_per_s"]
    per_gpu = rates[ranks]["images_per_s"] / ranks
    res.update(images_per_s_per_rank={"1": one, str(ranks): round(per_gpu, 3)},
               scaling_efficiency=round(per_gpu / one, 3))
    what = "GPU" if plan.cuda else "CPU rank (gloo, smoke size: not a GPU figure)"
    return "ok", (f"{one:.1f} img/s on 1 {what}, {per_gpu:.1f} img/s per {what.split(' ')[0]} "
                  f"on {ranks}: scaling efficiency {100 * per_gpu / one:.0f}%")



