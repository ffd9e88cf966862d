"""What each extra EMA shadow costs: time of `EMABank.update()` and memory, per number of decays,
at the study's model size, next to one full training step for scale.

    python -m bench.ema_overhead                         # LIFT 64x64 (58.5M parameters), CPU
    python -m bench.ema_overhead --model baseline --batch 8 --repeats 20 --device cuda

Prints the shadows' bytes and the process's resident-memory growth when the largest bank is
built, then per CPU thread count a Markdown table: decays tracked, median and best time of one
update (ms), and the cost of each shadow beyond the first (the slope from 1 to the largest
bank), next to one training step. An update is memory-bound (read the
shadow and the weights, write the shadow: 12 bytes per parameter and shadow in float32), so the
time per shadow is about 12 x parameters / memory bandwidth. Then BEMA (explore.ema.bema, timed
interleaved with one EMA track): three float32 copies of the weights and about 56 bytes
streamed per parameter and update (`--no-bema` skips it).

On a CPU shared with other busy processes, torch's OpenMP threads wait for each other at the
end of every kernel; with a few hundred tensors per update that dominates (seen here: 1.1 s per
update with 2 threads on a loaded 2-core machine, 0.11 s with 1 thread), so each thread count
gets its own table.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys

import torch

from explore.ema import BEMA, EMA, EMABank
from explore.nets.models import count_parameters

from ..common.machine import load_average
from ..common.sizes import ModelSize
from ..common.timing import measure, rss_bytes
from ..common.training import HarnessTrainer, random_batch, train_config

DECAYS = [0.9999, 0.999, 0.99, 0.9, 0.5, 0.1]


def measure_memory(model: torch.nn.Module, n: int, device: torch.device) -> tuple[float, float]:
    """(shadow MiB, growth of resident or CUDA memory in MiB) when a bank of n decays is built.
    Measured once, first: freed shadows stay in the allocator's pools, so a second bank would
    not grow the process."""
    gc.collect()
    before = rss_bytes() if device.type == "cpu" else torch.cuda.memory_allocated(device)
    bank = EMABank(model, decays=DECAYS[:n])
    after = rss_bytes() if device.type == "cpu" else torch.cuda.memory_allocated(device)
    shadow_bytes = sum(t.numel() * t.element_size() for tr in bank.tracks
                       for t in tr.shadow.values())
    del bank
    gc.collect()
    return shadow_bytes / 2**20, (after - before) / 2**20


def measure_bank(model: torch.nn.Module, n: int, repeats: int, device: torch.device) -> dict:
    """Time the update of a bank of n decays."""
    bank = EMABank(model, decays=DECAYS[:n])
    shadow_bytes = sum(t.numel() * t.element_size() for tr in bank.tracks
                       for t in tr.shadow.values())
    st = measure({"update": bank.update}, repeats, 2, device)["update"]
    del bank
    gc.collect()
    return {"decays": n, "median_ms": 1e3 * st["median_s"], "best_ms": 1e3 * st["min_s"],
            "shadow_mb": shadow_bytes / 2**20}


def _buffer_mib(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def measure_bema(model: torch.nn.Module, repeats: int, device: torch.device) -> dict:
    """Time one BEMA update (past its burn-in, as in training) against one EMA track's,
    interleaved so that load hits both alike; and the float32 buffers each keeps."""
    ema, bema = EMA(model, decay=DECAYS[0]), BEMA(model)
    st = measure({"ema": ema.update, "bema": bema.update}, repeats, 2, device)
    out = {"ema_median_ms": 1e3 * st["ema"]["median_s"], "ema_best_ms": 1e3 * st["ema"]["min_s"],
           "bema_median_ms": 1e3 * st["bema"]["median_s"],
           "bema_best_ms": 1e3 * st["bema"]["min_s"],
           "ema_mb": _buffer_mib(ema.shadow.values()),
           "bema_mb": _buffer_mib([*bema.shadow.values(), *bema.mu.values(),
                                   *bema.theta0.values()])}
    del ema, bema
    gc.collect()
    return out


def bema_table(r: dict, step_s: float | None) -> str:
    lines = ["| average | update median (ms) | update best (ms) | float32 buffers (MiB) |",
             "|---|---:|---:|---:|",
             f"| EMA (one track) | {r['ema_median_ms']:.1f} | {r['ema_best_ms']:.1f} | "
             f"{r['ema_mb']:.0f} |",
             f"| BEMA (mu, theta0, output) | {r['bema_median_ms']:.1f} | {r['bema_best_ms']:.1f} "
             f"| {r['bema_mb']:.0f} |", ""]
    extra = r["bema_median_ms"] - r["ema_median_ms"]
    line = (f"BEMA's update takes {r['bema_median_ms'] / r['ema_median_ms']:.1f}x an EMA's "
            f"(+{extra:.1f} ms per optimizer step, medians) and holds "
            f"{r['bema_mb'] / r['ema_mb']:.0f}x its memory.")
    if step_s is not None:
        line += (f" A BEMA update is {100 * r['bema_median_ms'] / (1e3 * step_s):.1f}% of a "
                 f"training step.")
    return "\n".join(lines + [line])


def measure_train_step(kind: str, batch: int, repeats: int, device: torch.device) -> float:
    """Median seconds of one optimizer step of the harness at the reference size and `batch`
    (`bench.common.training`: forward, backward, clip, AdamW, no EMA: the cost the shadows are
    compared with)."""
    size = ModelSize()
    trainer = HarnessTrainer(train_config(kind, size, device, batch, ema=False), device,
                             random_batch(batch, size.image_size, device))
    seconds = measure({"step": trainer.step}, repeats, 1, device)["step"]["median_s"]
    del trainer
    gc.collect()
    return seconds


def table(rows: list[dict], params: int, step_s: float | None, batch: int) -> str:
    lines = ["| decays | update median (ms) | update best (ms) | shadows (MiB) |",
             "|---:|---:|---:|---:|"]
    lines += [f"| {r['decays']} | {r['median_ms']:.1f} | {r['best_ms']:.1f} | "
              f"{r['shadow_mb']:.0f} |" for r in rows]
    first, last = rows[0], rows[-1]
    extra = max(1, last["decays"] - first["decays"])
    per_ms = (last["median_ms"] - first["median_ms"]) / extra
    lines += ["", f"Per extra shadow: +{per_ms:.1f} ms per optimizer step (median slope from "
              f"{first['decays']} to {last['decays']} decays)."]
    if step_s is not None:
        lines.append(f"One training step (AdamW, batch {batch}): {1e3 * step_s:.0f} ms (median), "
                     f"so each extra shadow adds {100 * per_ms / (1e3 * step_s):.1f}% of a step.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m bench.ema_overhead",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["lift", "baseline"], default="lift")
    parser.add_argument("--max-decays", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4, help="training step batch (0: skip)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-bema", action="store_true", help="skip the BEMA table")
    parser.add_argument("--threads", default=None,
                        help="comma-separated CPU thread counts, one table each (default: 1 "
                             "and torch's default)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    default_threads = torch.get_num_threads()
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else sorted({1, default_threads}))
    torch.manual_seed(0)
    model = ModelSize().build(args.model).to(device)
    params = count_parameters(model)
    command = " ".join(["python -m bench.ema_overhead",
                        *(argv if argv is not None else sys.argv[1:])])
    loads = load_average()
    load = ", ".join(f"{x:.1f}" for x in loads) if loads is not None else "?"
    parts = [f"`{command}`", "",
             f"{type(model).__name__} ({params / 1e6:.1f}M parameters, fp32) on {device} "
             f"({platform.machine()}, {os.cpu_count()} cores, load average {load} at start), "
             f"torch {torch.__version__}; {args.repeats} timed updates per row."]
    shadow_mb, growth_mb = measure_memory(model, args.max_decays, device)
    parts += ["", f"Memory: a bank of {args.max_decays} decays holds {shadow_mb:.0f} MiB of "
              f"float32 shadows ({shadow_mb / args.max_decays:.0f} MiB = 4 bytes x "
              f"{params / 1e6:.1f}M per decay); building it grew the process by "
              f"{growth_mb:.0f} MiB ({growth_mb / args.max_decays:.0f} MiB per decay)."]
    printed = 0
    for n_threads in threads if device.type == "cpu" else [default_threads]:
        torch.set_num_threads(n_threads)
        rows = [measure_bank(model, n, args.repeats, device)
                for n in range(1, args.max_decays + 1)]
        step_s = (measure_train_step(args.model, args.batch, max(3, args.repeats // 3), device)
                  if args.batch else None)
        parts += ["", f"{n_threads} thread(s):", "", table(rows, params, step_s, args.batch)]
        if not args.no_bema:
            parts += ["", bema_table(measure_bema(model, args.repeats, device), step_s)]
        print("\n".join(parts[printed:]), flush=True)  # the header with the first table
        printed = len(parts)
    torch.set_num_threads(default_threads)
    return "\n".join(parts)
