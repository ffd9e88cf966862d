"""bench (python -m bench): the whole bench on tiny models, in-process; the JSON schema, not the
timings.

Nothing here asserts a speed: timings on a shared CI machine say nothing. What is checked is that
every field is there, every time and ratio is a positive number, and the correctness checks the
bench makes along the way (identical DP paths and costs, heatmap and sampling agreement) hold.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from bench.common.sizes import ModelSize
from bench.common.training import EMA_DECAY
from bench.hotpath.config import KINDS, SCHEMA, SECTIONS, BenchConfig, preset_config
from bench.hotpath.report import markdown, targets
from bench.hotpath.run import config_from_args, main, parse_args, run_bench

REPO = Path(__file__).resolve().parents[1]

TINY = ModelSize((8, 16), 16, 16)
STATS = {"median_s", "min_s", "max_s", "reps", "times_s"}
TOP = {"schema", "command", "preset", "created", "device", "torch_version", "threads", "machine",
       "config", "notes", "train", "ema", "heatmap", "dp", "sampling", "peak_memory", "targets",
       "wall_seconds"}
MACHINE = {"hostname", "platform", "cpu", "cpu_count", "python", "torch", "cuda", "cudnn", "gpu",
           "load_average", "load_average_end"}
OPTIONS = ("bf16", "channels_last", "fused_adamw")
SKIPPED_OPTIONS = ("compile", "bf16_channels_last_fused_compile")
TARGETS = {
    "EMA update vs naive (CPU)", "EMA share of a training step",
    "DP vs nested loops, same path and cost", "heatmap vs per-cell, per-probe loop",
    *(f"{what} {kind} {rest}" for kind in ("baseline", "lift") for what, rest in (
        ("training", "vs naive fp32 loop (CPU)"), ("sampling", "vs naive loop (CPU)"),
        ("training", "bf16 vs fp32 images/s (GPU)"))),
}


def tiny_config(**kw) -> BenchConfig:
    cfg = preset_config(quick=True, device=torch.device("cpu"), threads=1)
    base = dict(preset="tiny", reps=2, warmup=1, ema_size=TINY, train_size=TINY, train_batch=2,
                train_reps=2, train_warmup=0, heatmap_size=TINY, heatmap_grid=2,
                heatmap_probes=2, heatmap_batch=2, heatmap_reps=1,
                heatmap_extra={"size": {"hidden_dims": [8, 16], "image_size": 16,
                                        "attn_min_ch": 8}, "grid": 1, "batch": 1, "probes": 1,
                               "reps": 1},
                dp_grid=8, dp_steps=6, dp_max_jump=2, sample_size=TINY, sample_images=2,
                sample_steps=3, sample_reps=2)
    return BenchConfig(**{**cfg.__dict__, **base, **kw})


@pytest.fixture(scope="module")
def result() -> dict:
    out = run_bench(tiny_config(), command="pytest", log=lambda _: None)
    # what --out writes must be strict JSON (no NaN/inf) and survive a round trip
    return json.loads(json.dumps(out, allow_nan=False, default=str))


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_stats(st: dict, reps: int) -> None:
    assert STATS <= set(st), set(st)
    assert st["reps"] == reps == len(st["times_s"])
    assert all(_positive(st[k]) for k in ("median_s", "min_s", "max_s"))
    assert st["min_s"] <= st["median_s"] <= st["max_s"]


def _check_throughput(st: dict) -> None:
    ips = st["images_per_s"]
    assert {"median", "min", "max", "images_per_call"} <= set(ips)
    assert all(_positive(ips[k]) for k in ("median", "min", "max"))
    assert ips["min"] <= ips["median"] <= ips["max"]


def test_top_level_and_machine(result):
    assert TOP <= set(result)
    assert result["schema"] == SCHEMA and result["device"] == "cpu"
    assert result["torch_version"] == torch.__version__ and result["threads"] == 1
    assert MACHINE <= set(result["machine"])
    assert _positive(result["wall_seconds"])
    assert any("no GPU" in n for n in result["notes"])
    pm = result["peak_memory"]
    assert {"cuda_max_memory_allocated_bytes", "process_peak_rss_bytes", "note"} <= set(pm)
    assert pm["cuda_max_memory_allocated_bytes"] is None  # a CPU run
    assert pm["process_peak_rss_bytes"] is None or pm["process_peak_rss_bytes"] > 0


def test_ema_section(result):
    ema = result["ema"]
    for name in ("harness", "naive"):
        _check_stats(ema[name], 2)
    assert _positive(ema["ratio"]) and _positive(ema["train_step_s"])
    assert _positive(ema["copy_floor"]["median_s"]) and _positive(ema["harness_vs_copy_floor"])
    assert 0 < ema["step_share_percent"] < 100  # the step includes the update
    assert ema["config"]["parameters"] > 0 and ema["config"]["decay"] == EMA_DECAY
    assert "train section" in ema["train_step_source"]  # same size: reuses the train figure


def test_train_section(result):
    tr = result["train"]
    assert tr["config"]["batch"] == 2
    for kind in ("baseline", "lift"):
        res = tr[kind]
        for name in ("harness", "naive", *OPTIONS):
            assert "error" not in res[name], res[name]
            _check_stats(res[name], 2)
            _check_throughput(res[name])
        assert _positive(res["ratio_harness_vs_naive"])
        for opt in OPTIONS:
            assert _positive(res[opt]["ratio_vs_harness_fp32"])
        for opt in SKIPPED_OPTIONS:  # present, with the reason
            assert res[opt]["skipped"]


def test_heatmap_section(result):
    hm = result["heatmap"]
    assert _positive(hm["ratio"])
    for key, cells, reps in (("main", 4, 1), ("extra", 1, 1)):
        h = hm[key]
        assert h["config"]["cells"] == cells
        assert h["config"]["tangents"] == "written-out LiftUNet forward-mode pass"
        for name in ("harness", "naive"):
            _check_stats(h[name], reps)
            assert _positive(h[name]["per_cell_s"]) and _positive(h[name]["projected_30x30_s"])
            assert "memory" in h[name]
        assert _positive(h["ratio"])
        assert h["max_rel_diff"] < 1e-3  # the harness and the naive loop compute the same map


def test_dp_section(result):
    dp = result["dp"]
    for name in ("harness", "naive"):
        _check_stats(dp[name], 2)
    assert _positive(dp["ratio"])
    assert dp["paths_identical"] is True and dp["costs_identical"] is True
    assert dp["path"][0] == [0, 0] and dp["path"][-1] == [7, 7] and len(dp["path"]) == 7
    assert _positive(dp["cost"])


def test_sampling_section(result):
    sp = result["sampling"]
    assert sp["config"]["images"] == 2 and sp["config"]["steps"] == 3
    for kind in ("baseline", "lift"):
        res = sp[kind]
        for name in ("harness", "naive"):
            _check_stats(res[name], 2)
            _check_throughput(res[name])
            assert "memory" in res[name]
        assert _positive(res["ratio"])
        # same starting noise, same DDIM: the images agree up to float rounding
        assert res["max_abs_diff_uint8"] <= 2


# target -> (where its figure is in the JSON, comparison, threshold, the device it is judged on);
# written out here, independently of bench.hotpath.report.targets, to recompute every `holds`
RULES = {
    "EMA update vs naive (CPU)": (("ema", "ratio"), ">=", 4, "cpu"),
    "EMA share of a training step": (("ema", "step_share_percent"), "<", 3, None),
    "DP vs nested loops, same path and cost": (("dp", "ratio"), ">=", 20, None),
    "heatmap vs per-cell, per-probe loop": (("heatmap", "main", "ratio"), ">=", 3, None),
    **{f"training {k} vs naive fp32 loop (CPU)": (("train", k, "ratio_harness_vs_naive"), ">=",
                                                  1, "cpu") for k in KINDS},
    **{f"sampling {k} vs naive loop (CPU)": (("sampling", k, "ratio"), ">=", 1, "cpu")
       for k in KINDS},
    **{f"training {k} bf16 vs fp32 images/s (GPU)": (("train", k, "bf16", "ratio_vs_harness_fp32"),
                                                     ">=", 1.5, "cuda") for k in KINDS},
}


def _lookup(result: dict, keys: tuple[str, ...]):
    x = result
    for k in keys:
        if not isinstance(x, dict) or k not in x:
            return None
        x = x[k]
    return x


def _expected_holds(result: dict, name: str) -> bool | None:
    """None when the figure is missing or the target is for the other device, else the rule."""
    keys, op, threshold, device = RULES[name]
    measured = _lookup(result, keys)
    here = "cpu" if result["device"] == "cpu" else "cuda"
    if measured is None or device not in (None, here):
        return None
    holds = measured >= threshold if op == ">=" else measured < threshold
    if name.startswith("DP"):  # the path and cost must also be identical
        holds = holds and result["dp"]["paths_identical"] and result["dp"]["costs_identical"]
    return bool(holds)


def _check_targets(result: dict) -> dict[str, dict]:
    rows = {t["target"]: t for t in targets(result)}
    assert set(rows) == set(RULES) == TARGETS
    for name, t in rows.items():
        assert t["measured"] == _lookup(result, RULES[name][0]), name
        assert t["holds"] is _expected_holds(result, name), (name, t, result["device"])
    return rows


def test_targets(result):
    rows = {t["target"]: t for t in result["targets"]}
    assert rows == _check_targets(result)  # the JSON's targets are those of its own figures
    for name, t in rows.items():
        assert t["rule"].startswith(f"{RULES[name][1]} {RULES[name][2]}"), (name, t["rule"])
        assert t["measured"] is None or _positive(t["measured"])
    assert rows["training baseline bf16 vs fp32 images/s (GPU)"]["holds"] is None  # CPU run
    assert rows["DP vs nested loops, same path and cost"]["holds"] is not None  # measured


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
def test_targets_at_their_thresholds(result, device):
    """Each figure just below, at and just above its threshold, on both kinds of device."""
    for name, (keys, _, threshold, _) in RULES.items():
        for value in (threshold - 0.01, threshold, threshold + 0.01):
            r = copy.deepcopy(result)
            r["device"] = device
            _lookup(r, keys[:-1])[keys[-1]] = value
            _check_targets(r)
            if name.startswith("DP"):  # a fast DP with a different path does not hold
                r["dp"]["paths_identical"] = False
                assert not _check_targets(r)[name]["holds"]


def test_targets_without_their_figures_are_na(result):
    for name, (keys, *_) in RULES.items():  # one figure missing
        r = copy.deepcopy(result)
        del _lookup(r, keys[:-1])[keys[-1]]
        t = _check_targets(r)[name]
        assert t["measured"] is None and t["holds"] is None
    r = copy.deepcopy(result)  # every section skipped (--only): every target n/a
    for section in SECTIONS:
        r[section] = {"skipped": "not selected (--only)"}
    r["targets"] = targets(r)
    assert all(t["measured"] is None and t["holds"] is None for t in r["targets"])
    lines = markdown(r).splitlines()
    for t in r["targets"]:
        assert f"| {t['target']} | - | {t['rule']} | n/a |" in lines


def test_markdown_table(result):
    text = markdown(result)
    assert "| measurement | configuration | harness |" in text
    for row in ("| EMA update |", "| train lift |", "| heatmap |", "| DP path |",
                "| sampling baseline |", "| target | measured |"):
        assert row in text, row


def test_cli_only_dp_writes_json(tmp_path, capsys):
    out = tmp_path / "sub" / "bench.json"
    assert main(["--quick", "--device", "cpu", "--only", "dp", "--reps", "1",
                 "--threads", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert TOP <= set(data)
    assert data["preset"] == "quick" and data["command"].startswith("python -m bench --quick")
    for name in ("train", "ema", "heatmap", "sampling"):
        assert data[name] == {"skipped": "not selected (--only)"}
    assert data["dp"]["paths_identical"] is True and data["dp"]["config"]["grid"] == 30
    assert "| DP path |" in capsys.readouterr().out


def test_presets_and_arguments():
    cpu = torch.device("cpu")
    full = preset_config(quick=False, device=cpu, threads=2)
    assert full.ema_size == ModelSize() and full.train_size == ModelSize()  # reference size
    assert full.heatmap_extra is not None and "compile" in full.skipped_options
    assert preset_config(False, cpu, 2, compile_on_cpu=True).train_options[-1] == \
        "bf16_channels_last_fused_compile"
    gpu = preset_config(quick=False, device=torch.device("cuda:0"), threads=2)
    assert gpu.train_batch == 64 and gpu.heatmap_grid == 30 and gpu.heatmap_size == ModelSize()
    assert "compile" in gpu.train_options and not gpu.skipped_options
    with pytest.raises(SystemExit, match="unknown section"):
        config_from_args(parse_args(["--only", "ema,nope", "--device", "cpu"]))
    with pytest.raises(SystemExit, match="--reps"):
        config_from_args(parse_args(["--reps", "0", "--device", "cpu"]))
