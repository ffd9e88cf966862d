"""The hot-path benchmarks: each hot path of the harness against a straightforward version of the
same computation, in one process.

    python -m bench                  # full: the reference model size (minutes on a CPU)
    python -m bench --quick          # seconds: CI smoke test and laptops
    python -m bench --device cuda:0 --out bench.json
    python -m bench --only ema,dp --threads 1
    python -m bench.ema_overhead     # cost of each extra EMA shadow (ema=multi)

Each measurement times the harness and the naive version of the same computation
(bench.hotpath.naive: written as the original study wrote it) on the same machine, in the same
process, interleaved (ABBA order, so that drift and load spikes from other processes hit both
alike), and reports the median of several repetitions after warm-up, with min and max, and
their ratio:

- ema: one EMA update of the LIFT model (`explore.ema.EMA.update` vs a per-parameter update that
  allocates new tensors), and the update's share of one full training step;
- train: training-step throughput of Baseline and LIFT, harness defaults
  (explore.training.step.train_step + EMA, through bench.common.training) vs a plain fp32 loop,
  and each speed option of the training config (trainer.precision=bf16, trainer.channels_last,
  optim.optimizer.fused, trainer.compile) against the harness defaults;
- heatmap: the error heatmap (explore.lift.heatmap) vs the per-cell, per-scale, per-probe jvp loop;
- dp: the DP path (explore.lift.dp_path) vs four nested loops, and whether path and cost are
  identical;
- sampling: 18-step DDIM throughput of both models (explore.nets.sampling vs a per-step loop).

A ratio is always "how many times faster the harness is": naive time / harness time, or harness
images/s / naive images/s. Output: a Markdown table on the terminal and, with --out, JSON with the
machine, torch version, device, every figure and every ratio (`bench.hotpath.run.run_bench`
returns the same dict).

On a CPU the full preset scales what would take hours down, and says so in each row: the training
batch is small, the heatmap is measured on a smaller model and grid (plus one grid cell at the
reference size), and torch.compile is skipped unless --compile is given (compiling the UNet on a
CPU takes minutes and is not what a CPU run would use).

Modules: config (the sections, BenchConfig, presets), cases_* (one per section), naive (the
reference implementations, also used by the tests), report (targets and Markdown), run
(run_bench and the command line), ema_overhead (its own command). Timing, model sizes, the
machine record and the harness's training step are bench.common's.

May import bench.common, explore; not bench.gpu.
"""
