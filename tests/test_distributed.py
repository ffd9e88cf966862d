"""Data-parallel training on the CPU (gloo, 2 ranks started by torchrun): the same run as one
process up to the rounding of the gradient all-reduce, every average included; killed
mid-epoch and started again, it ends bit for bit where an uninterrupted 2-rank run does; only
rank 0 writes the run folder; a rank that fails stops both; bad settings stop every rank
before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import TINY_TRAIN

from explore.core.errors import ConfigError
from explore.run.checkpoint import load_checkpoint
from explore.training.distributed import Ranks

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
# LIFT with every kind of average: a fixed decay, a power EMA and BEMA in one bank; the resume
# state after every step, so a kill lands between two saved steps. AdamW's eps at 1e-3: with the
# default 1e-8 an element whose gradient is ~0 moves by +-lr whichever way rounding tips its
# sign, so 2 ranks and 1 differ by up to 2 lr there (measured: 1e-3 after one step at lr 2e-3);
# with 1e-3 the update follows the gradient smoothly and only the rounding itself is left
RUN = ["model=lift", "ema=posthoc", "ema.sigma_rels=[0.1]", "ema.decays=[0.9]", "ema.bema={}",
       "checkpoint.resume_every_min=0", "+optim.optimizer.eps=1e-3"]
# what 2 ranks may differ from 1 by: the all-reduce sums the gradient in another order (float32
# rounding), carried through 8 steps (measured: 1.2e-7 on the weights and EMAs, 2.4e-7 on
# BEMA; another data set moves them by ~1e-2)
TOLERANCE = 1e-6


def torchrun(run: Path, *hooks: str, nproc: int = 2, extra=()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(REPO / "tests" / "ranks_run.py"), str(run), *hooks,
           "--",
           *TINY_TRAIN, *RUN, *extra]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def _states(path: Path) -> dict[str, dict]:
    state = load_checkpoint(path)
    out = {"raw": state["model_state"]}
    for name, ema in state["emas"].items():
        out[name] = ema["shadow"]
        if "mu" in ema:  # BEMA's own EMA of the weights
            out[f"{name}.mu"] = ema["mu"]
    return out


def _max_diff(a: dict, b: dict) -> float:
    """The largest difference of any tensor the two hold under the same names."""
    assert a.keys() == b.keys()
    return max((x[k].double() - y[k].double()).abs().max().item()
               for name in a for x, y in [(a[name], b[name])] for k in x.keys() & y.keys()
               if x[k].is_floating_point())


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run, rank 1 watched for writes into the run folder."""
    run = tmp_path_factory.mktemp("ddp") / "straight"
    done = torchrun(run)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return run


def test_two_ranks_train_the_one_process_run(two_ranks, trained_run):
    one = trained_run(*RUN)
    a, b = _states(one / "checkpoints" / "epoch_0002.pt"), _states(
        two_ranks / "checkpoints" / "epoch_0002.pt")
    assert set(a) == {"raw", "ema@0.9", "phema@0.1", "bema", "bema.mu"}  # every kind of average
    diff = _max_diff(a, b)
    print(f"\nmax |2 ranks - 1 rank| over weights and every average: {diff:.2e}")
    assert diff < TOLERANCE
    # ... and not equal by accident: the averages moved, and a run on other data is far off
    assert _max_diff({"raw": a["raw"]}, {"raw": a["ema@0.9"]}) > 100 * TOLERANCE
    other = _states(trained_run(*RUN, "data.seed=1") / "checkpoints" / "epoch_0002.pt")
    assert _max_diff(a, other) > 100 * TOLERANCE
    rows = [line.split(",") for line in (two_ranks / "metrics.csv").read_text().splitlines()]
    ones = [line.split(",") for line in (one / "metrics.csv").read_text().splitlines()]
    loss = rows[0].index("loss")
    for r, o in zip(rows[1:], ones[1:]):  # the loss is the mean over both ranks' samples
        assert abs(float(r[loss]) - float(o[loss])) < 1e-5
    log = (two_ranks / "train.log").read_text()
    assert "data-parallel over 2 ranks (gloo): global batch 16, 8 per rank" in log


def test_two_ranks_are_bit_for_bit_one_process_that_accumulates_two_micro_batches(two_ranks,
                                                                                   trained_run):
    # trainer.grad_accum=2 in one process computes rank r's slice as its micro-batch r, with the
    # same draws; backward's accumulation adds the two halves of the gradient as the gloo
    # all-reduce does: nothing is left to round differently (edm2's batch_gpu, the same idea)
    one = trained_run(*RUN, "trainer.grad_accum=2")
    a, b = (_states(r / "checkpoints" / "last.pt") for r in (one, two_ranks))
    assert set(a) == {"raw", "ema@0.9", "phema@0.1", "bema", "bema.mu"}
    for name in a:
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)
    assert load_checkpoint(one / "checkpoints" / "last.pt")["step"] == 8


def test_only_rank_0_writes_the_run_folder(two_ranks):
    # (ranks_run.py fails the run when rank 1 writes into it: two_ranks finished with status 0)
    names = sorted(p.name for p in (two_ranks / "checkpoints").iterdir())
    assert names == ["epoch_0001.pt", "epoch_0002.pt", "last.pt"]
    assert len(list((two_ranks / "phema").glob("snapshot_*.pt"))) == 8  # power EMA snapshots


def test_killed_mid_epoch_and_started_again_it_ends_bitwise_where_two_ranks_do(two_ranks,
                                                                               tmp_path):
    run = tmp_path / "killed"
    killed = torchrun(run, "--die-at", "7", "--rank", "1")  # epoch 2, batch 3, on rank 1
    assert killed.returncode != 0
    mid = load_checkpoint(run / "checkpoints" / "last.pt")
    # the last whole step rank 0 saved before torchrun stopped it: step 6, or step 5 when the
    # kill reached rank 0 while it was writing step 6 (step 5's write ended before the step 6
    # all-reduce that rank 1 also took part in): mid-epoch either way
    assert (mid["epoch"], mid["batch"], mid["step"]) in {(1, 1, 5), (1, 2, 6)}
    again = torchrun(run, extra=["resume=true"])
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (two_ranks, run))
    assert a["step"] == b["step"] == 8
    for name, x in _states(two_ranks / "checkpoints" / "last.pt").items():
        y = _states(run / "checkpoints" / "last.pt")[name]
        for k in x:
            assert torch.equal(x[k], y[k]), (name, k)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    assert "resuming" in (run / "train.log").read_text()


def test_a_rank_that_fails_stops_the_run(tmp_path):
    done = torchrun(tmp_path / "run", "--raise-at", "3", "--rank", "1")
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "rank 1 fails on purpose at step 3" in out
    assert not (tmp_path / "run" / "checkpoints" / "epoch_0001.pt").exists()  # stopped in epoch 1


def test_a_batch_that_does_not_split_stops_every_rank_before_anything_is_written(tmp_path):
    done = torchrun(tmp_path / "run", extra=["trainer.batch_size=15", "data.num_images=60"])
    assert done.returncode != 0
    assert "trainer.batch_size=15 (the global batch) does not split over 2 ranks" in \
        done.stdout + done.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


# -- the settings each rank checks ------------------------------------------------------------
def test_torchrun_environment_is_checked_before_joining(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(ConfigError, match="device=1 with 4 ranks"):
        Ranks.from_environment("1")  # torchrun assigns the GPUs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(Exception, match="LOCAL_RANK 3, but this node shows 2 GPU"):
        Ranks.from_environment("auto")  # 4 processes on a 2-GPU node
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert Ranks.from_environment("cpu") == (Ranks(), torch.device("cpu"))


def test_micro_batches_draw_what_one_micro_batch_draws(tiny_cfg):
    """train_step with grad_accum=2: micro-batch k sees the timesteps and noise the whole batch
    draws for its samples (as rank k of 2 does), and the generator ends where it would."""
    from tiny import settings

    from explore.nets.diffusion import lift_loss
    from explore.training.step import build_training, train_step

    seen: dict[int, list] = {1: [], 2: []}
    ends = {}
    batch = torch.rand(16, 3, 16, 16) * 2 - 1
    for accum in (1, 2):
        torch.manual_seed(0)
        training = build_training(settings(tiny_cfg("model=lift", "ema=off",
                                                     f"trainer.grad_accum={accum}")),
                                  torch.device("cpu"), 8)

        def recording(forward, schedule, x0, generator=None, part=None, accum=accum):
            def model(x_hi, x_lo, t_hi, t_lo):
                seen[accum].append((x_hi.clone(), x_lo.clone(), t_hi.clone(), t_lo.clone()))
                return forward(x_hi, x_lo, t_hi, t_lo)
            return lift_loss(model, schedule, x0, generator=generator, part=part)

        training.loss_fn = recording
        gen = torch.Generator().manual_seed(7)
        train_step(training, batch, gen)
        ends[accum] = gen.get_state()
    (whole,), halves = seen[1], seen[2]
    assert len(halves) == 2
    for k, half in enumerate(halves):
        for w, h in zip(whole, half):
            assert torch.equal(w[8 * k:8 * k + 8], h)
    assert torch.equal(ends[1], ends[2])


def test_each_rank_takes_its_slice_and_draws_what_one_process_draws():
    from explore.nets.diffusion import CosineSchedule, baseline_loss

    schedule = CosineSchedule.named("study")
    x = torch.randn(8, 3, 8, 8)
    seen = []

    def model(xt, t):
        seen.append((xt.clone(), t.clone()))
        return torch.zeros_like(xt)

    baseline_loss(model, schedule, x, generator=torch.Generator().manual_seed(0))
    whole_xt, whole_t = seen.pop()
    for rank in (0, 1):
        ranks = Ranks(rank=rank, world=2)
        mine, part = ranks.slice(x)
        assert part == (4 * rank, 8) and torch.equal(mine, x[4 * rank:4 * rank + 4])
        baseline_loss(model, schedule, mine, generator=torch.Generator().manual_seed(0),
                      part=part)
        xt, t = seen.pop()
        assert torch.equal(t, whole_t[4 * rank:4 * rank + 4])
        assert torch.equal(xt, whole_xt[4 * rank:4 * rank + 4])
    # a micro-batch of a one-process run with grad_accum=2 is rank 1's slice, drawn alike
    micro, part = Ranks().slice(x[4:], start=4, total=8)
    assert part == (4, 8) and torch.equal(micro, x[4:])
    assert Ranks(rank=1, world=2).slice(x[4:], start=4, total=8)[1] == (6, 8)
    with pytest.raises(ConfigError, match="does not split over 2 ranks x trainer.grad_accum=2"):
        Ranks(world=2).check_batch(18, 2)
