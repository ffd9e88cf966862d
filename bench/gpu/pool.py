"""Step 5 of the GPU check: the study's device pool (launch.pool.DeviceQueue) on two GPUs.

Two tiny jobs go through the queue the study uses, one slot per GPU. Each job (a submitit
LocalExecutor process, CUDA_VISIBLE_DEVICES set to its slot's GPU) reports what it saw: how
many GPUs, the GPU's UUID, its process, when it started and ended, and a checksum of a small
computation on its device. Passed when both finished, on different slots and different GPUs
(UUIDs), each seeing exactly one, and they ran at the same time (each waits for the other to
start before it computes).

With fewer than two GPUs the GPU part is skipped, and said so; on the CPU (where the check runs
scaled down) the same two jobs run on two CPU slots instead, which tests the code path.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from .context import Outcome, StepTimeout

JOB_SECONDS = 2.0  # each job computes this long once both have started
MEET_TIMEOUT_S = 30.0  # how long a job waits for the other to start (a queue that runs one job
                       # at a time never lets them meet)


def probe(tag: str, meeting: str, slot) -> dict:
    """One job of the pool: what device it got, whether the other job was running at the same
    time (each leaves a file in `meeting` and waits for the other's), and a few seconds of work
    on its device."""
    import torch

    out = {"tag": tag, "slot": slot.label, "pid": os.getpid(), "start": time.time(),
           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
           "threads": torch.get_num_threads()}
    here = Path(meeting)
    (here / f"{tag}.started").touch()
    while len(list(here.glob("*.started"))) < 2 and time.time() - out["start"] < MEET_TIMEOUT_S:
        time.sleep(0.05)
    out["met_the_other"] = len(list(here.glob("*.started"))) >= 2
    out["waited_s"] = round(time.time() - out["start"], 2)
    if slot.kind == "cuda":
        device = torch.device("cuda:0")
        props = torch.cuda.get_device_properties(0)
        out.update(device_count=torch.cuda.device_count(), gpu=props.name,
                   uuid=str(getattr(props, "uuid", "")),
                   pci_bus_id=getattr(props, "pci_bus_id", None))
    else:
        device = torch.device("cpu")
        out.update(device_count=torch.cuda.device_count() if torch.cuda.is_available() else 0)
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(0)).to(device)
    rounds = 0
    t0 = time.time()
    while time.time() - t0 < JOB_SECONDS:
        x = torch.tanh(x @ x / 16)
        rounds += 1
    out.update(rounds=rounds, checksum=float(x.double().sum()), end=time.time())
    return out


def run_pool(slots, folder, ctx) -> list:
    from launch.pool import DeviceQueue, Ticket

    if folder.exists():
        shutil.rmtree(folder)
    meeting = folder / "meeting"
    meeting.mkdir(parents=True)
    queue = DeviceQueue(slots, timeout_min=5)
    tickets = [queue.submit(Ticket(name=f"job{k}", fn=probe, args=(f"job{k}", str(meeting)),
                                   folder=folder / f"job{k}")) for k in range(2)]
    try:
        while queue.busy:
            if ctx.left() <= 0:
                raise StepTimeout("the pool's jobs did not finish within the step's slice")
            queue.poll()
            time.sleep(0.2)
    finally:
        if queue.busy:
            queue.cancel_all(wait_s=5)
    return tickets


def step_pool(ctx) -> Outcome:
    from launch.pool import make_slots, visible_gpus

    plan, res = ctx.plan, ctx.result
    gpus = visible_gpus()
    res["gpus_visible"] = gpus
    folder = ctx.out / "work" / "pool"
    if plan.cuda and len(gpus) < 2:
        res["skipped"] = f"{len(gpus)} GPU(s) visible; the pool check needs two"
        return "skipped", f"skipped: {len(gpus)} GPU visible, the two-GPU pool needs two"
    if plan.cuda:
        slots = make_slots(gpus[:2])
        res["mode"] = "two GPUs"
    else:
        slots = make_slots("cpu", cpu_jobs=2)
        res["mode"] = "two CPU slots (no GPU in this run: the two-GPU check is skipped)"
    res["slots"] = [s.label for s in slots]
    ctx.need(8, "two pool jobs")
    ctx.log(f"two jobs on {', '.join(s.label for s in slots)} ...")
    tickets = run_pool(slots, folder, ctx)
    jobs = res["jobs"] = [{"name": t.name, "state": t.state, "slot": t.slot.label if t.slot
                           else None, "error": t.error, "log": str(t.log_path or ""),
                           "result": t.result} for t in tickets]
    ctx.done("pool jobs")
    bad = [j for j in jobs if j["state"] != "done"]
    if bad:
        return "fail", "; ".join(f"{j['name']} {j['state']}: {j['error']} (log {j['log']})"
                                 for j in bad)
    a, b = (j["result"] for j in jobs)
    overlap = a["met_the_other"] and b["met_the_other"]
    res["ran_at_the_same_time"] = overlap
    problems = []
    if a["slot"] == b["slot"]:
        problems.append(f"both ran on {a['slot']}")
    if plan.cuda:
        if not (a.get("uuid") and b.get("uuid") and a["uuid"] != b["uuid"]):
            problems.append(f"GPU UUIDs {a.get('uuid')!r} and {b.get('uuid')!r} do not show "
                            f"two different GPUs")
        if a.get("device_count") != 1 or b.get("device_count") != 1:
            problems.append(f"each job should see 1 GPU, they saw {a.get('device_count')} and "
                            f"{b.get('device_count')}")
    if not overlap:
        problems.append(f"the two jobs did not run at the same time (one waited "
                        f"{MEET_TIMEOUT_S:.0f} s for the other)")
    where = (f"{a['slot']} ({a.get('gpu', '')} {a.get('uuid', '')[:13]}) and {b['slot']} "
             f"({b.get('gpu', '')} {b.get('uuid', '')[:13]})" if plan.cuda
             else f"{a['slot']} and {b['slot']}")
    if problems:
        return "fail", f"two jobs ran on {where}, but: {'; '.join(problems)}"
    if plan.cuda:
        return "ok", f"two jobs ran at the same time on {where}, one GPU each"
    return "skipped", (f"no GPU visible, so the two-GPU pool is skipped; the pool ran two jobs "
                       f"at the same time on {where}: ok")
