"""Running the bench: `run_bench` (the selected sections, in one process) and the command line,
`python -m bench` (see the package docstring)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from explore.core.devices import resolve_device
from explore.core.errors import UserError
from explore.core.files import atomic_write

from ..common.machine import describe_machine, load_average
from ..common.timing import cpu_peak_rss_bytes
from .cases_dp import bench_dp
from .cases_ema import bench_ema
from .cases_heatmap import bench_heatmap
from .cases_sampling import bench_sampling
from .cases_train import bench_train
from .config import SCHEMA, SECTIONS, BenchConfig, preset_config
from .report import markdown, targets

PROG = "python -m bench"


def run_bench(cfg: BenchConfig, command: str = "run_bench()", log=print) -> dict:
    """Run the selected sections; returns the JSON-ready result dict."""
    device = resolve_device(cfg.device)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    result: dict = {
        "schema": SCHEMA, "command": command, "preset": cfg.preset,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "torch_version": torch.__version__, "threads": cfg.threads,
        "machine": describe_machine(device), "config": _plain(asdict(cfg)),
        "notes": list(cfg.notes) + _platform_notes(device),
    }
    runners = {"train": lambda: bench_train(cfg, device),
               "ema": lambda: bench_ema(cfg, device, result.get("train")),
               "heatmap": lambda: bench_heatmap(cfg, device),
               "dp": lambda: bench_dp(cfg, device),
               "sampling": lambda: bench_sampling(cfg, device)}
    try:
        for name in SECTIONS:
            if name not in cfg.sections:
                result[name] = {"skipped": "not selected (--only)"}
                continue
            log(f"bench: {name} ...")
            t0 = time.perf_counter()
            result[name] = runners[name]()
            result[name]["section_seconds"] = time.perf_counter() - t0
            log(f"bench: {name} done in {result[name]['section_seconds']:.1f} s")
    finally:
        torch.set_num_threads(threads_before)
    result["peak_memory"] = {
        "cuda_max_memory_allocated_bytes": (int(torch.cuda.max_memory_allocated(device))
                                            if device.type == "cuda" else None),
        "process_peak_rss_bytes": cpu_peak_rss_bytes(),
        "note": "process_peak_rss_bytes is ru_maxrss: process-wide, over the whole run "
                "(all sections and variants), not per measurement",
    }
    result["machine"]["load_average_end"] = load_average()
    result["targets"] = targets(result)
    result["wall_seconds"] = time.perf_counter() - t_start
    return result


def _platform_notes(device: torch.device) -> list[str]:
    notes = []
    if device.type == "cpu":
        notes.append("no GPU in this run: the GPU figures (batch 64, bf16 >= 1.5x fp32, "
                     "torch.compile) need `--device cuda:0` on a GPU machine")
        notes.append("peak memory on the CPU is the process's max RSS (ru_maxrss), "
                     "process-wide; CUDA runs report max_memory_allocated per measurement")
    return notes


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Time the harness's hot paths against naive versions, in one process.",
        epilog="Ratios are 'times faster than the naive version' (or than the harness's fp32 "
               "defaults, for a training option).")
    p.add_argument("--quick", action="store_true",
                   help="small models and configurations: seconds (CI smoke test, laptops)")
    p.add_argument("--device", default="auto", help="auto (first GPU, else CPU) | cpu | cuda:N")
    p.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    default_threads = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                       else os.cpu_count() or 1)
    p.add_argument("--threads", type=int, default=default_threads,
                   help=f"torch CPU threads (default: all usable cores, {default_threads})")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions of every section (default: per preset)")
    p.add_argument("--compile", action="store_true",
                   help="also measure trainer.compile on the CPU (minutes of compiling)")
    p.add_argument("--heatmap-grid", type=int, default=None,
                   help="grid size of the main heatmap measurement (default: per preset)")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    device = resolve_device(args.device)
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"--only: unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    cfg = preset_config(args.quick, device, args.threads, compile_on_cpu=args.compile)
    cfg = replace(cfg, sections=sections)
    if args.reps is not None:
        if args.reps < 1:
            raise SystemExit(f"--reps must be >= 1, got {args.reps}")
        cfg = replace(cfg, reps=args.reps, train_reps=args.reps, heatmap_reps=args.reps,
                      sample_reps=args.reps)
    if args.heatmap_grid is not None:
        cfg = replace(cfg, heatmap_grid=args.heatmap_grid)
    return cfg


def main(argv: list[str] | None = None) -> int:
    """`python -m bench [--quick] [--device D] [--out FILE] ...`: the table, and JSON with --out."""
    args = parse_args(argv)
    try:
        cfg = config_from_args(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    command = f"{PROG} " + " ".join(sys.argv[1:] if argv is None else argv)
    result = run_bench(cfg, command=command.strip(),
                       log=lambda m: print(m, file=sys.stderr, flush=True))
    print(markdown(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, lambda f: f.write(
            json.dumps(result, indent=2, default=str).encode()))
        print(f"\nJSON: {args.out}", file=sys.stderr)
    return 0
