"""The bench's output: the targets table (`targets`) and the Markdown report (`markdown`).

A ratio is always "how many times faster the harness is"; each target states its rule and whether
the measured figure meets it (holds: null when the figure was not measured, or when the target is
for the other kind of device).
"""

from __future__ import annotations

from ..common.numbers import num
from .config import KINDS, TRAIN_OPTIONS


def targets(result: dict) -> list[dict]:
    """The bench's targets, each with its measured figure and whether it holds.

    CPU targets are judged only on a CPU run and the GPU one only on a GPU run (holds: null
    otherwise); a figure that was not measured gives holds: null.
    """
    cpu = result["device"] == "cpu"
    rows = []

    def add(name, measured, rule, holds, applies=True):
        rows.append({"target": name, "measured": measured, "rule": rule,
                     "holds": (bool(holds) if measured is not None else None) if applies
                     else None})

    def get(*keys):
        x = result
        for k in keys:
            if not isinstance(x, dict) or k not in x:
                return None
            x = x[k]
        return x

    ema = get("ema", "ratio")
    add("EMA update vs naive (CPU)", ema, ">= 4x", ema is not None and ema >= 4, cpu)
    share = get("ema", "step_share_percent")
    add("EMA share of a training step", share, "< 3%", share is not None and share < 3)
    dp = get("dp", "ratio")
    same = get("dp", "paths_identical") and get("dp", "costs_identical")
    add("DP vs nested loops, same path and cost", dp, ">= 20x and identical",
        dp is not None and dp >= 20 and same)
    hm = get("heatmap", "main", "ratio")
    add("heatmap vs per-cell, per-probe loop", hm, ">= 3x", hm is not None and hm >= 3)
    for kind in KINDS:
        tr = get("train", kind, "ratio_harness_vs_naive")
        add(f"training {kind} vs naive fp32 loop (CPU)", tr, ">= 1x (no slower)",
            tr is not None and tr >= 1, cpu)
        sp = get("sampling", kind, "ratio")
        add(f"sampling {kind} vs naive loop (CPU)", sp, ">= 1x (no slower)",
            sp is not None and sp >= 1, cpu)
        bf = get("train", kind, "bf16", "ratio_vs_harness_fp32")
        add(f"training {kind} bf16 vs fp32 images/s (GPU)", bf, ">= 1.5x",
            bf is not None and bf >= 1.5, not cpu)
    return rows

def _fmt_s(st: dict | None) -> str:
    if not st or "median_s" not in st:
        return (st or {}).get("error") or (st or {}).get("skipped") or "-"
    return f"{num(st['median_s'])} s ({num(st['min_s'])}-{num(st['max_s'])})"


def _fmt_ips(st: dict | None) -> str:
    if not st or "images_per_s" not in st:
        return (st or {}).get("error") or (st or {}).get("skipped") or "-"
    ips = st["images_per_s"]
    return f"{num(ips['median'])} img/s ({num(ips['min'])}-{num(ips['max'])})"


def _x(r) -> str:
    return f"**{num(r)}x**" if isinstance(r, (int, float)) else "-"


def _load(machine: dict) -> str:
    start, end = machine.get("load_average"), machine.get("load_average_end")
    if not start or not end:
        return ""
    return (f"; 1-min load average {start[0]:.1f} before, {end[0]:.1f} after (the bench adds "
            f"up to its thread count; more means other processes shared the CPU)")


def markdown(result: dict) -> str:
    """The result as a Markdown table (median, and min-max over the repetitions)."""
    lines = [f"bench ({result['preset']}) on {result['device']}"
             f" ({result['machine'].get('gpu') or result['machine'].get('cpu')}, "
             f"{result['threads']} threads), torch {result['torch_version']}, "
             f"{num(result.get('wall_seconds', 0))} s{_load(result['machine'])}",
             "",
             "| measurement | configuration | harness | naive / baseline | ratio |",
             "|---|---|---|---|---:|"]
    ema = result.get("ema", {})
    if "ratio" in ema:
        c = ema["config"]
        lines.append(f"| EMA update | LIFT {c['model_size']}, {c['parameters'] / 1e6:.1f}M "
                     f"params | {_fmt_s(ema['harness'])} | {_fmt_s(ema['naive'])} | "
                     f"{_x(ema['ratio'])} |")
        lines.append(f"| EMA update vs a copy of the weights (memory-bound floor) | "
                     f"torch._foreach_copy_ of the same {c['parameters'] / 1e6:.1f}M params | "
                     f"{_fmt_s(ema['harness'])} | {_fmt_s(ema['copy_floor'])} | "
                     f"{num(ema['harness_vs_copy_floor'])} (1 = at the floor) |")
        lines.append(f"| EMA share of a training step | {ema['train_step_source']} | "
                     f"{num(ema['step_share_percent'])} % of {num(ema['train_step_s'])} s | "
                     f"- | - |")
    tr = result.get("train", {})
    if "config" in tr:
        c = tr["config"]
        for kind in KINDS:
            res = tr.get(kind, {})
            lines.append(f"| train {kind} | {c['model_size']}, batch {c['batch']}, fp32 | "
                         f"{_fmt_ips(res.get('harness'))} | {_fmt_ips(res.get('naive'))} "
                         f"(plain loop) | {_x(res.get('ratio_harness_vs_naive'))} |")
            for opt in TRAIN_OPTIONS:
                r = res.get(opt)
                if r is None:
                    continue
                lines.append(f"| train {kind}: {opt} | {' '.join(TRAIN_OPTIONS[opt])} | "
                             f"{_fmt_ips(r)} | {_fmt_ips(res.get('harness'))} (harness fp32) | "
                             f"{_x(r.get('ratio_vs_harness_fp32'))} |")
    hm = result.get("heatmap", {})
    for key in ("main", "extra"):
        h = hm.get(key, {})
        if "ratio" in h:
            c = h["config"]
            proj = (f"; 30x30 projected {num(h['harness']['projected_30x30_s'])} s vs "
                    f"{num(h['naive']['projected_30x30_s'])} s" if c["cells"] != 900 else "")
            lines.append(f"| heatmap | LIFT {c['model_size']}, {c['grid']}x{c['grid']} grid, "
                         f"K={c['probes']}, batch {c['batch']}{proj} | {_fmt_s(h['harness'])} | "
                         f"{_fmt_s(h['naive'])} | {_x(h['ratio'])} |")
    dp = result.get("dp", {})
    if "ratio" in dp:
        c = dp["config"]
        lines.append(f"| DP path | {c['grid']}x{c['grid']}, {c['steps']} steps, max_jump "
                     f"{c['max_jump']}; identical path: {dp['paths_identical']}, cost: "
                     f"{dp['costs_identical']} | {_fmt_s(dp['harness'])} | "
                     f"{_fmt_s(dp['naive'])} | {_x(dp['ratio'])} |")
    sp = result.get("sampling", {})
    if "config" in sp:
        c = sp["config"]
        for kind in KINDS:
            res = sp.get(kind, {})
            lines.append(f"| sampling {kind} | {c['model_size']}, {c['images']} images, "
                         f"{c['steps']} steps | {_fmt_ips(res.get('harness'))} | "
                         f"{_fmt_ips(res.get('naive'))} | {_x(res.get('ratio'))} |")
    pm = result.get("peak_memory", {})
    if pm.get("cuda_max_memory_allocated_bytes") is not None:
        lines.append(f"| peak memory | CUDA max_memory_allocated, whole run | "
                     f"{pm['cuda_max_memory_allocated_bytes'] / 2**30:.2f} GiB | - | - |")
    if pm.get("process_peak_rss_bytes") is not None:
        lines.append(f"| peak memory | process max RSS (ru_maxrss, process-wide, whole run) | "
                     f"{pm['process_peak_rss_bytes'] / 2**30:.2f} GiB | - | - |")
    lines += ["", "| target | measured | rule | holds |", "|---|---:|---|---|"]
    for t in result.get("targets", []):
        m = t["measured"]
        holds = {True: "yes", False: "**no**", None: "n/a"}[t["holds"]]
        lines.append(f"| {t['target']} | {num(m) if isinstance(m, (int, float)) else '-'} | "
                     f"{t['rule']} | {holds} |")
    if result.get("notes"):
        lines.append("")
        lines += [f"- {n}" for n in result["notes"]]
    return "\n".join(lines)
