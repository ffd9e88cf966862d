"""The GPU check (`./scripts/gpu-check`, bench.gpu_check) works before any GPU sees it: its CPU
mode runs every step scaled down and writes its JSON and Markdown; a budget too small for
anything still writes both and exits 0; SIGTERM leaves what was measured; the projection's
arithmetic is checked by hand."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.gpu.projection import Protocol, makespan, project, study_protocol

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
STATUSES = {"ok", "warn", "fail", "cut off", "skipped", "not run"}


def _check(out: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--out",
                           str(out), *extra], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def _steps(out: Path) -> dict[str, dict]:
    report = json.loads((out / "gpu-check.json").read_text())
    return {s["name"]: s for s in report["steps"]}


@pytest.fixture(scope="module")
def cpu_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    done = _check(out)
    return out, done


@pytest.mark.slow
def test_cpu_mode_runs_every_step_and_writes_json_and_markdown(cpu_check):
    out, done = cpu_check
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["mode"] == "cpu" and report["finished"] and report["exit_status"] == 0
    steps = report["steps"]
    assert [s["name"] for s in steps] == ["correctness", "resume", "throughput", "projection",
                                          "pool", "ddp"]
    for s in steps:
        assert s["status"] in STATUSES and s["verdict"] and s["seconds"] is not None, s
    status = {s["name"]: s["status"] for s in steps}
    # on a CPU every step runs; the two-GPU pool is skipped (its CPU stand-in ran); the
    # data-parallel step runs 1 and 2 gloo ranks at smoke size instead of GPUs
    assert status == {"correctness": "ok", "resume": "ok", "throughput": "ok",
                      "projection": "ok", "pool": "skipped", "ddp": "ok"}, report
    # one verdict line per step on the terminal
    for n, name in enumerate(status, 1):
        assert f"[{n}/6] {name}: {status[name]}: " in done.stdout
    ddp = steps[5]["result"]
    assert [ddp[f"ranks_{n}"]["ranks"] for n in (1, 2)] == [1, 2]
    assert ddp["ranks_2"]["global_batch"] == 2 * ddp["ranks_1"]["global_batch"]
    assert ddp["scaling_efficiency"] > 0 and "scaling efficiency" in steps[5]["verdict"]
    md = (out / "gpu-check.md").read_text()
    for name in status:
        assert f". {name} | **{status[name]}**" in md
    assert "GPU-hours" in md and "not meaningful for a GPU" in md
    assert report["elapsed_s"] < 360  # the CPU mode's promise: <= 6 minutes


@pytest.mark.slow
def test_cpu_mode_projects_positive_hours_from_its_own_rates(cpu_check):
    out, _ = cpu_check
    report = json.loads((out / "gpu-check.json").read_text())
    projected = report["projected"]
    assert projected["gpu_hours_total"] > 0 and projected["figures_from"].startswith("CPU")
    assert all(h > 0 for h in projected["wall_hours"].values())
    proj = _steps(out)["projection"]["result"]["projection"]
    assert set(proj["per_model"]) == {"baseline", "lift"}
    parts = sum(v["gpu_hours"] for v in proj["per_model"].values()) + proj["real_features_hours"]
    assert math.isclose(parts, proj["gpu_hours_total"], rel_tol=1e-9)
    # the rates it used are step 3's
    tp = _steps(out)["throughput"]["result"]
    rates = _steps(out)["projection"]["result"]["rates"]["models"]["lift"]
    assert rates["train_img_s"] == tp["train"]["lift"][rates["train_variant"]][
        "images_per_s"]["median"]
    assert any("fastest measured variant" in a for a in proj["assumed"])


@pytest.mark.slow
def test_cpu_mode_resume_is_bitwise_and_evaluates(cpu_check):
    out, _ = cpu_check
    res = _steps(out)["resume"]["result"]
    assert res["processes"]["killed"]["exit_status"] == -signal.SIGKILL
    assert res["killed_at"]["epoch_done"] == 1 and res["killed_at"]["batch"] > 0
    assert res["resumed_vs_straight"]["bitwise"] and res["resumed_vs_straight"]["max_abs_diff"] == 0
    assert res["evaluate"]["exit_status"] == 0
    assert sorted(r["weights"] for r in res["evaluate"]["rows"]) == ["ema", "raw"]
    corr = _steps(out)["correctness"]["result"]
    assert corr["ema"]["bitwise"]
    assert all(m["forward"]["rel_diff"] < 1e-4 for m in corr["models"].values())


@pytest.mark.slow
def test_a_budget_too_small_cuts_every_step_off_and_still_writes_both_files(tmp_path):
    done = _check(tmp_path, "--budget-s", "1")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    status = {n: s["status"] for n, s in _steps(tmp_path).items()}
    assert status == {"correctness": "cut off", "resume": "cut off", "throughput": "cut off",
                      "projection": "skipped", "pool": "cut off", "ddp": "cut off"}, status
    assert "cut off by the budget" in _steps(tmp_path)["throughput"]["verdict"]
    md = (tmp_path / "gpu-check.md").read_text()
    assert md.count("**cut off**") == 5
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["finished"] and report["projected"] is None


@pytest.mark.slow
def test_sigterm_keeps_what_was_measured_and_stops_the_training_process(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--out",
                             str(tmp_path)], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    child = None
    try:
        end = time.time() + 300
        while time.time() < end and child is None:  # until step 2's first training is under way
            time.sleep(0.2)
            try:
                running = _steps(tmp_path)["resume"]["result"].get("processes", {})
            except (OSError, ValueError):
                continue
            child = next((p["pid"] for p in running.values() if p.get("exit_status") is None
                          and p.get("pid")), None)
        assert child is not None, "step 2 never started a training process"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, output
    steps = _steps(tmp_path)
    assert steps["correctness"]["status"] == "ok"
    assert steps["resume"]["status"] == "cut off" and "terminated" in steps["resume"]["verdict"]
    assert [steps[n]["status"] for n in ("throughput", "projection", "pool", "ddp")] == \
        ["not run"] * 4
    assert "**cut off**" in (tmp_path / "gpu-check.md").read_text()
    with pytest.raises(ProcessLookupError):  # the training process went with it
        os.kill(child, 0)


def test_the_projection_by_hand():
    p = Protocol(models=["baseline", "lift"], runs_per_model=1, epochs=10, images=1050, batch=100,
                 sample_every=5, sample_images=10, weight_sets=2, checkpoint_every=4,
                 eval_images=500, eval_steps=18, eval_seeds=1,
                 paths={"baseline": 1, "lift": 1}, heatmap_cells={"baseline": 0, "lift": 9},
                 bootstrap=10, goal_gpu_hours=0.3)
    rates = {"models": {"baseline": {"train_img_s": 100.0, "sample_img_s": 10.0},
                        "lift": {"train_img_s": 50.0, "sample_img_s": 5.0,
                                 "heatmap_cell_s": 2.0}},
             "feature_img_s": 1000.0, "bootstrap_replicate_s": 0.1,
             "resume_write_s": 0.5, "snapshot_write_s": 0.25}
    out = project(rates, p, gpu_counts=(1, 2))
    # 10 steps of 100 images per epoch (1050 // 100, the last partial batch dropped);
    # checkpoints at epochs 4, 8 and 10; sample grids at 5 and 10; 3 x 2 = 6 rows per run
    assert p.steps_per_epoch == 10 and p.checkpoints == 3 and p.sample_grids == 2
    b, lift = out["per_model"]["baseline"], out["per_model"]["lift"]
    assert b["eval_rows_per_run"] == 6
    # baseline: training 10 x 10 x 100 / 100 = 100 s; grids 2 x 10 x 2 / 10 = 4 s; sampling
    # 6 x 500 / 10 = 300 s; features 6 x 500 / 1000 = 3 s; bootstrap 6 x 10 x 0.1 = 6 s
    assert b["train_hours"] * 3600 == pytest.approx(100)
    assert b["train_grids_hours"] * 3600 == pytest.approx(4)
    assert b["eval_breakdown_hours"]["sampling"] * 3600 == pytest.approx(300)
    assert b["eval_breakdown_hours"]["features"] * 3600 == pytest.approx(3)
    assert b["eval_breakdown_hours"]["heatmap"] == 0
    assert b["eval_breakdown_hours"]["bootstrap"] * 3600 == pytest.approx(6)
    # the resume state after each of 10 epochs, a snapshot at each of 3 checkpoints
    assert b["checkpoint_writes_hours"] * 3600 == pytest.approx(10 * 0.5 + 3 * 0.25)
    assert b["run_hours"] * 3600 == pytest.approx(413 + 5.75)
    # LIFT: 200 s training, 8 s grids, 600 s sampling, 3 s features, heatmaps 3 x 2 x 9 x 2 s =
    # 108 s, 6 s bootstrap, 5.75 s writes: 930.75 s
    assert lift["train_hours"] * 3600 == pytest.approx(200)
    assert lift["eval_breakdown_hours"]["heatmap"] * 3600 == pytest.approx(108)
    assert lift["run_hours"] * 3600 == pytest.approx(930.75)
    # the real images' features once: 500 / 1000 = 0.5 s
    assert out["gpu_hours_total"] * 3600 == pytest.approx(418.75 + 930.75 + 0.5)
    assert out["wall_hours"]["1"] * 3600 == pytest.approx(1350)
    assert out["wall_hours"]["2"] * 3600 == pytest.approx(931.25)  # one run per GPU
    assert out["meets_goal"] is False
    assert out["speedup_needed"] == pytest.approx(1350 / 3600 / 0.3)
    # several sampling seeds: no bootstrap; a model without rates is named, not guessed
    p.bootstrap, p.eval_seeds = 0, 2
    out2 = project({**rates, "models": {"lift": rates["models"]["lift"]}}, p)
    assert out2["missing"] == ["baseline"] and out2["meets_goal"] is None
    assert out2["per_model"]["lift"]["eval_breakdown_hours"]["sampling"] * 3600 == \
        pytest.approx(1200)


def test_makespan_places_the_longest_jobs_first():
    assert makespan([5, 4, 3, 3, 3], 1) == 18
    # longest first, each on the device that frees first: 5 | 4, 3 -> 4 (7), 3 -> 5 (8),
    # 3 -> 7 (10); the best split, 5+4 | 3+3+3 = 9, is not what a queue does
    assert makespan([5, 4, 3, 3, 3], 2) == 10
    assert makespan([5, 4, 3, 3, 3], 10) == 5
    assert makespan([], 4) == 0


def test_the_projected_protocol_is_the_default_study():
    p = study_protocol()
    assert p.models == ["baseline", "lift"] and p.runs_per_model == 1
    assert (p.epochs, p.images, p.batch, p.steps_per_epoch) == (2000, 15_803, 64, 246)
    assert p.checkpoints == 10 and p.weight_sets == 2 and p.eval_seeds == 1
    assert p.eval_images == 15_803 and p.eval_steps == 18
    assert p.heatmap_cells == {"baseline": 0, "lift": 900} and p.bootstrap == 200


def test_the_wrapper_script_runs_the_module():
    script = REPO / "scripts" / "gpu-check"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "ensure-venv.sh" in text and 'python -m bench.gpu_check "$@"' in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if (REPO / ".venv" / "bin" / "python").exists():  # set up: the real thing
        done = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0 and "--budget-s" in done.stdout, done.stderr


# -- the GPU-only branches, run on the CPU with the plan saying "cuda" ----------------------------
def _gpu_like_context(tmp_path, number: int):
    """A step context whose plan takes the GPU branches (cuda=True) while computing on the CPU
    at smoke size."""
    import dataclasses

    import torch

    from bench.gpu.check import Check
    from bench.gpu.cli import parse_args
    from bench.gpu.context import StepContext
    from bench.gpu.plan import make_plan

    args = parse_args(["--device", "cpu", "--out", str(tmp_path), "--budget-s", "300"])
    args.gpu_counts = [1, 2]
    plan = dataclasses.replace(make_plan(torch.device("cpu"), 0), cuda=True)
    check = Check(args, plan, tmp_path, "test")
    entry = check.report["steps"][number - 1]
    return StepContext(check, number, time.monotonic() + 300, entry["result"])


def test_gpu_branch_of_correctness_also_compares_with_tf32_off(tmp_path):
    from bench.gpu.correctness import step_correctness

    ctx = _gpu_like_context(tmp_path, 1)
    status, verdict = step_correctness(ctx)
    assert status == "ok" and "TF32 off" in verdict, verdict
    forward = ctx.result["models"]["lift"]["forward"]
    assert forward["layout"] == "NCHW" and "rel_diff_strict_fp32" in forward


def test_gpu_branch_of_resume_runs_twice_more_to_tell_nondeterminism_from_the_resume(
        cpu_check, tmp_path):
    """On a GPU, a resumed run that is not bitwise is followed by a second uninterrupted run:
    here the CPU check's own uninterrupted run and one more, as if the resumed run had come out
    different: two uninterrupted runs agree bit for bit on the CPU, so the resume is to blame."""
    import shutil

    from bench.gpu import resume as gpu_resume

    ctx = _gpu_like_context(tmp_path, 2)
    work = tmp_path / "work" / "resume"
    straight = work / "straight"
    shutil.copytree(cpu_check[0] / "work" / "resume" / "straight", straight)
    overrides = gpu_resume.train_overrides(ctx.plan, ctx.plan.device)
    train = functools.partial(gpu_resume.run_training, ctx, work, overrides,
                              gpu_resume.child_env(ctx.plan.device))
    differs = {"bitwise": False, "max_abs_diff": 1e-7,
               "weights": {"bitwise": False, "max_abs_diff": 1e-7},
               "ema": {"bitwise": True, "max_abs_diff": 0.0}}
    ctx.result["nondeterministic_ops"] = []
    status, verdict = gpu_resume.cuda_floor(ctx, ctx.result, differs, train, straight)
    assert status == "fail" and "the resume changes the run" in verdict, verdict
    assert ctx.result["straight_vs_straight_again"]["bitwise"]
    assert ctx.result["processes"]["straight_again"]["exit_status"] == 0
