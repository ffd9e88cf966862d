"""The GPU check (`./scripts/gpu-check`, `python -m bench.gpu_check`): one prepared command for a
GPU slot, five steps within a time budget (bench.gpu.cli has the whole description).

    cli            the command line; builds the plan and the check, handles SIGTERM
    check          the run: the budget's slices, each step under an alarm, the report files
    context        what a step gets (StepContext) and returns (Outcome); StepTimeout, STEP_NAMES
    plan           what each kind of device measures (the GPU plan, its scaled-down CPU twin)
    correctness    step 1: the models, the sampler and the EMA, CPU vs the device
    resume         step 2: killed and resumed training, bit for bit; child: its training process
    throughput     step 3: the rates the study's cost depends on
    projection     step 4: the default study's cost from those rates
    pool           step 5: the study's device pool on two GPUs
    report         gpu-check.md from the report dict

The steps import context and plan (below them), never check or cli (above them).
May import bench.common, explore, launch; not bench.hotpath.
"""
