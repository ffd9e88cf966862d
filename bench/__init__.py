"""Two measuring programs of the harness, each in its own subpackage, on what they share.

    python -m bench [--quick] ...     bench.hotpath: the hot paths against naive versions
    python -m bench.ema_overhead      bench.hotpath.ema_overhead: the cost of each EMA shadow
    ./scripts/gpu-check               bench.gpu: the one prepared command for a GPU slot
                                      (`python -m bench.gpu_check`)

    bench/
      __main__.py, ema_overhead.py, gpu_check.py    the `python -m` entry points, thin
      hotpath/   the benchmarks: config and presets, cases_* (one per section), naive (the
                 reference implementations they, and the tests, compare against), report,
                 run (run_bench and the command line), ema_overhead
      gpu/       the GPU check: context (what a step gets and returns), plan (what each device
                 measures), correctness, resume + child, throughput, projection, pool (the five
                 steps), report (the Markdown), check (the budget, the steps, the files), cli
      common/    what both measure with: timing and memory, the machine record, model sizes,
                 the harness's training step, the number format

Imports point down: the entry points -> hotpath | gpu -> common -> explore (and launch, whose
device pool the GPU check runs); hotpath and gpu never import each other.
"""
