"""Step 2 of the GPU check: a 2-epoch smoke training of LIFT on the device (shapes data), killed
once mid-epoch and resumed, against an uninterrupted run; then `python -m explore.evaluate` of
it on the device.

Three training processes (bench.gpu.child: `explore.train.train` with
torch.use_deterministic_algorithms(True, warn_only=True) and CUBLAS_WORKSPACE_CONFIG=:4096:8):

- `straight`: 2 epochs without a stop;
- `killed`: the same, SIGKILLed by itself after optimizer step spe + 2 (epoch 2, batch 3 under
  way; the resume state is written after every step: checkpoint.resume_every_min=0);
- `resumed`: `resume=true` in the killed run's folder.

The final weights, EMA and optimizer moments of `resumed` are compared with `straight`'s, bit for
bit. On a GPU, when they differ, a second uninterrupted run shows whether two runs without any
stop differ as much (kernels without a deterministic implementation, named from the warnings),
or the resume is to blame.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from explore.run.checkpoint import load_checkpoint

from .context import Outcome, StepTimeout

REPO = Path(__file__).resolve().parents[2]
DIE_AFTER_EPOCH_2_BATCH = 2  # killed with epoch 2's second batch saved, its third under way


def child_env(device) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU run never initialises a GPU
    return env


def run_process(cmd: list[str], log: Path, ctx, what: str, env: dict, record: dict
                ) -> tuple[int, float]:
    """Run `cmd` (its output to `log`), within the step's time; killed with its process group
    when the step is cut off or the check terminated. `record` gets its pid, exit status and
    seconds. Returns (exit status, seconds)."""
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        record.update(pid=proc.pid, log=str(log), exit_status=None)
        try:
            ctx.save()
            code = proc.wait(timeout=max(1.0, ctx.left()))
        except subprocess.TimeoutExpired:
            raise StepTimeout(f"{what} did not finish within the step's slice") from None
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    seconds = time.monotonic() - t0
    record.update(exit_status=code, seconds=round(seconds, 1))
    return code, seconds


def _tail(path: Path, lines: int = 6) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def compare_states(a: dict, b: dict) -> dict:
    """Max |difference| of the weights, every EMA shadow and the AdamW moments of two resume
    states, and whether each group is bitwise equal."""
    def groups(state):
        out = {"weights": state["model_state"]}
        ema = state.get("ema_state") or {}
        out["ema"] = ema.get("shadow", {}) if isinstance(ema, dict) else {}
        opt = state.get("optimizer", {}).get("state", {})
        out["adam_moments"] = {f"{k}.{n}": v for k, s in opt.items() for n, v in s.items()
                               if torch.is_tensor(v) and v.dim() > 0}
        return out

    ga, gb = groups(a), groups(b)
    res = {}
    for name in ga:
        worst, equal, count = 0.0, True, 0
        for key, x in ga[name].items():
            y = gb[name].get(key)
            if y is None or y.shape != x.shape:
                equal, worst = False, math.inf
                continue
            count += 1
            if not torch.equal(x, y):
                equal = False
                if x.is_floating_point():
                    worst = max(worst, float((x.double() - y.double()).abs().max()))
        res[name] = {"tensors": count, "bitwise": equal, "max_abs_diff": worst}
    res["bitwise"] = all(res[n]["bitwise"] for n in ga)
    res["max_abs_diff"] = max(res[n]["max_abs_diff"] for n in ga)
    return res


def train_overrides(plan, device) -> list[str]:
    return ["experiment=smoke", "model=lift", f"device={device}", "seed=0",
            "trainer.epochs=2", f"data.num_images={plan.train_images}",
            f"trainer.batch_size={plan.train_batch}", "trainer.progress=false",
            "checkpoint.resume_every_min=0", "trainer.sample_every=1",
            "trainer.sample_steps=4", "trainer.sample_images=16"]


def run_training(ctx, work: Path, overrides: list[str], env: dict, name: str,
                 extra: list[str] = (), die: int | None = None, run: str | None = None
                 ) -> tuple[Path, int]:
    """One training process (bench.gpu.child) in `work/<run or name>`, its output in
    `work/<name>.log`: (its run folder, its exit status)."""
    run_dir = work / (run or name)
    cmd = [sys.executable, "-m", "bench.gpu.child", str(run_dir), "--warnings",
           str(work / "nondeterministic-ops.txt")]
    if die is not None:
        cmd += ["--die-after-step", str(die)]
    cmd += ["--", *overrides, *extra]
    ctx.log(f"training '{name}' ...")
    record = ctx.result.setdefault("processes", {}).setdefault(name, {})
    code, _ = run_process(cmd, work / f"{name}.log", ctx, f"training '{name}'", env, record)
    return run_dir, code


def step_resume(ctx) -> Outcome:
    plan, res = ctx.plan, ctx.result
    work = ctx.out / "work" / "resume"
    if work.exists():  # this step's own folder from an earlier check: start afresh
        shutil.rmtree(work)
    work.mkdir(parents=True)
    device = plan.device
    env = child_env(device)
    overrides = train_overrides(plan, device)
    spe = plan.train_images // plan.train_batch
    die_after = spe + DIE_AFTER_EPOCH_2_BATCH
    res.update(model="lift (smoke size, dims 16x32, 32 px)", data="shapes",
               images=plan.train_images, batch=plan.train_batch, steps_per_epoch=spe, epochs=2,
               killed_after_step=die_after, overrides=overrides,
               deterministic="torch.use_deterministic_algorithms(True, warn_only=True), "
                             "cudnn.benchmark off, CUBLAS_WORKSPACE_CONFIG="
                             + env["CUBLAS_WORKSPACE_CONFIG"],
               folder=str(work))
    warn_file = work / "nondeterministic-ops.txt"
    train = functools.partial(run_training, ctx, work, overrides, env)

    ctx.need(20, "three smoke trainings")
    straight, code = train("straight")
    if code != 0:
        return "fail", (f"the uninterrupted training failed (exit {code}): "
                        f"{_tail(work / 'straight.log')}")
    ctx.done("uninterrupted run")
    killed, code = train("killed", die=die_after)
    if code != -signal.SIGKILL:
        return "fail", (f"the run to be killed ended with exit {code} instead of being killed "
                        f"after step {die_after}: {_tail(work / 'killed.log')}")
    mid = load_checkpoint(killed / "checkpoints" / "last.pt")
    res["killed_at"] = {"epoch_done": int(mid["epoch"]), "batch": int(mid.get("batch", 0)),
                        "step": int(mid["step"])}
    ctx.done(f"killed at step {mid['step']}")
    _, code = train("resumed", extra=["resume=true"], run="killed")
    if code != 0:
        return "fail", f"the resumed training failed (exit {code}): {_tail(work / 'resumed.log')}"
    resumed = killed
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    cmp = compare_states(a, b)
    cmp["snapshot_epoch_2"] = compare_states(
        load_checkpoint(straight / "checkpoints" / "epoch_0002.pt"),
        load_checkpoint(resumed / "checkpoints" / "epoch_0002.pt"))
    res["resumed_vs_straight"] = cmp
    res["final_step"] = {"straight": int(a["step"]), "resumed": int(b["step"])}
    res["nondeterministic_ops"] = _read_lines(warn_file)
    ctx.done("resumed run compared")
    killed_ok = res["killed_at"]["batch"] > 0 and res["killed_at"]["epoch_done"] == 1
    if cmp["bitwise"] and cmp["snapshot_epoch_2"]["bitwise"]:
        status, verdict = "ok", (f"killed at step {mid['step']} (epoch 2, batch "
                                 f"{res['killed_at']['batch']}) and resumed: final weights, EMA "
                                 f"and AdamW moments bitwise equal to the uninterrupted run")
    elif plan.cuda:
        status, verdict = cuda_floor(ctx, res, cmp, train, straight)
    else:
        status, verdict = "fail", (f"resumed run differs from the uninterrupted one on the CPU "
                                   f"(max |diff| {cmp['max_abs_diff']:.2e}): the bitwise resume "
                                   f"guarantee is broken")
    if not killed_ok:
        status = "fail" if status == "ok" else status
        verdict += f"; but the kill did not land mid-epoch 2 ({res['killed_at']})"
    if a["step"] != b["step"]:
        status, verdict = "fail", verdict + f"; step counts differ ({res['final_step']})"
    ev_status, ev_verdict = evaluate(ctx, resumed, env)
    verdict += f"; evaluate: {ev_verdict}"
    if ev_status == "fail" or status == "fail":
        return "fail", verdict
    return ("warn" if "warn" in (status, ev_status) else "ok"), verdict


def cuda_floor(ctx, res, cmp, train, straight) -> Outcome:
    """Not bitwise on the GPU: do two uninterrupted runs differ too?"""
    ops = res["nondeterministic_ops"]
    said = (f"; operations without a deterministic CUDA kernel: {len(ops)}" if ops else
            "; no operation warned of a missing deterministic kernel")
    diff = f"max |diff| {cmp['max_abs_diff']:.3e} (weights {cmp['weights']['max_abs_diff']:.3e}, " \
           f"EMA {cmp['ema']['max_abs_diff']:.3e})"
    try:
        ctx.need(15, "a second uninterrupted run (is CUDA itself reproducible?)")
    except StepTimeout:
        return "warn", f"resumed vs uninterrupted not bitwise: {diff}{said}; no time left to " \
                       f"run a second uninterrupted run"
    again, code = train("straight_again", run="straight_again")
    if code != 0:
        return "warn", f"resumed vs uninterrupted not bitwise: {diff}{said}; the second " \
                       f"uninterrupted run failed (exit {code})"
    floor = compare_states(load_checkpoint(straight / "checkpoints" / "last.pt"),
                           load_checkpoint(again / "checkpoints" / "last.pt"))
    res["straight_vs_straight_again"] = floor
    res["nondeterministic_ops"] = _read_lines(ctx.out / "work" / "resume" /
                                              "nondeterministic-ops.txt")
    ctx.done("second uninterrupted run")
    if floor["bitwise"]:
        return "fail", (f"resumed vs uninterrupted not bitwise ({diff}) although two "
                        f"uninterrupted CUDA runs are: the resume changes the run{said}")
    return "warn", (f"not bitwise on CUDA: resumed vs uninterrupted {diff}; two uninterrupted "
                    f"runs differ by {floor['max_abs_diff']:.3e} too (non-deterministic "
                    f"kernels, not the resume){said}")


def _read_lines(path: Path) -> list[str]:
    try:
        return [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return []


def evaluate(ctx, run_dir: Path, env: dict) -> Outcome:
    """`python -m explore.evaluate` of the resumed run's last epoch on the device."""
    plan, res = ctx.plan, ctx.result
    ctx.need(10, "python -m explore.evaluate")
    cmd = [sys.executable, "-m", "explore.evaluate", f"run_dir={run_dir}",
           f"device={plan.device}", "progress=false", "eval.epochs=[2]", "eval.seeds=[42]",
           f"eval.fid.cache_root={ctx.out / 'work' / 'fidcache'}", *plan.eval_overrides]
    ctx.log("python -m explore.evaluate ...")
    log = run_dir.parent / "evaluate.log"
    ev = res["evaluate"] = {"command": " ".join(["python -m explore.evaluate", *cmd[3:]])}
    code, seconds = run_process(cmd, log, ctx, "explore.evaluate", env, ev)
    if code != 0:
        return "fail", f"exit {code}: {_tail(log)}"
    with open(run_dir / "eval" / "fid.csv") as f:
        rows = list(csv.DictReader(f))
    ev["rows"] = [{k: r.get(k) for k in ("epoch", "weights", "path", "sample_seed", "fid",
                                          "kid", "num_images", "seconds")} for r in rows]
    ctx.done("explore.evaluate")
    fids = [float(r["fid"]) for r in rows if r.get("fid") not in (None, "")]
    weights = sorted({r["weights"] for r in rows})
    if len(rows) < 2 or len(fids) != len(rows) or not all(math.isfinite(x) for x in fids):
        return "fail", f"{len(rows)} row(s) in fid.csv, FIDs {fids}: expected raw and EMA rows"
    return "ok", (f"{len(rows)} rows ({', '.join(weights)}), FID "
                  f"{', '.join(f'{x:.3g}' for x in fids)} in {seconds:.0f} s")
