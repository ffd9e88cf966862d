"""`DIR/gpu-check.md`: the GPU check's report as Markdown (from the same dict as the JSON)."""

from __future__ import annotations

import math

from ..common.numbers import num
from .plan import TRAIN_VARIANTS


def _gib(mem: dict | None) -> str:
    if not mem or not mem.get("peak_bytes"):
        return "-"
    return f"{mem['peak_bytes'] / 2**30:.2f} GiB"


def _ips(r: dict | None) -> str:
    if not r:
        return "-"
    if "images_per_s" in r:
        i = r["images_per_s"]
        return f"{num(i['median'])} ({num(i['min'])}-{num(i['max'])})"
    return r.get("error") or r.get("skipped") or r.get("unfinished") or "-"


def _h(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:,.3g}" if x < 1000 else f"{x:,.0f}"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# GPU check", "",
             f"`{report['command']}`: {report['mode']} mode on {report['device']} "
             f"({m.get('gpu') or m.get('cpu')}), torch {m.get('torch')}, CUDA {m.get('cuda')}, "
             f"{report['threads']} CPU threads; started {report['created']}, "
             f"{report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget"
             + ("" if report["finished"] else " (not finished: in progress or stopped)") + ".",
             "", "| step | status | verdict | seconds (slice) |", "|---|---|---|---:|"]
    for s in report["steps"]:
        sec = "-" if s["seconds"] is None else f"{s['seconds']:.0f}"
        sl = "" if s["slice_s"] is None else f" ({s['slice_s']:.0f})"
        verdict = str(s["verdict"]).replace("|", "\\|")
        lines.append(f"| {s['step']}. {s['name']} | **{s['status']}** | {verdict} | "
                     f"{sec}{sl} |")
    steps = {s["name"]: s["result"] for s in report["steps"]}
    lines += _correctness(steps.get("correctness") or {})
    lines += _resume(steps.get("resume") or {})
    lines += _throughput(steps.get("throughput") or {})
    lines += _projection(steps.get("projection") or {})
    pool = steps.get("pool") or {}
    if pool.get("jobs"):
        lines += ["", "## 5. Device pool", "", f"Mode: {pool.get('mode')}.", "",
                  "| job | slot | state | saw | pid | seconds |", "|---|---|---|---|---:|---:|"]
        for j in pool["jobs"]:
            r = j.get("result") or {}
            saw = r.get("gpu") or f"{r.get('device_count', '?')} GPU(s)"
            dur = f"{r['end'] - r['start']:.1f}" if "end" in r else "-"
            lines.append(f"| {j['name']} | {j['slot']} | {j['state']} | {saw} "
                         f"{(r.get('uuid') or '')[:18]} | {r.get('pid', '-')} | {dur} |")
    lines += _ddp(steps.get("ddp") or {})
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _ddp(res: dict) -> list[str]:
    runs = [res[k] for k in sorted(res) if k.startswith("ranks_") and isinstance(res[k], dict)
            and "images_per_s" in res[k]]
    if not runs:
        return []
    out = ["", "## 6. One run on several GPUs (data-parallel)", "",
           f"`{res.get('command')}`, LIFT, {res.get('per_rank_batch')} images per rank, "
           f"precision {res.get('precision')}.", "",
           "| ranks | global batch | training img/s | per rank | backend |",
           "|---:|---:|---:|---:|---|"]
    for r in runs:
        out.append(f"| {r['ranks']} | {r['global_batch']} | {r['images_per_s']:.1f} | "
                   f"{r['images_per_s'] / r['ranks']:.1f} | {r['backend']} |")
    if "scaling_efficiency" in res:
        out += ["", f"Scaling efficiency (per-rank throughput at {runs[-1]['ranks']} ranks / at "
                    f"1): {100 * res['scaling_efficiency']:.0f}%."]
    return out


def _correctness(res: dict) -> list[str]:
    models = res.get("models")
    if not models:
        return []
    out = ["", "## 1. Correctness", "",
           f"Reference: {res.get('reference')}; under test: {res.get('under_test')}; "
           f"{res.get('model_size')}.", "",
           "| model | forward max abs diff (relative) | TF32 off | DDIM uint8 levels: max / mean "
           "/ share differing |", "|---|---|---|---|"]
    for kind, r in models.items():
        f, d = r.get("forward", {}), r.get("ddim")
        strict = (f"{f['max_abs_diff_strict_fp32']:.2e}" if "max_abs_diff_strict_fp32" in f
                  else "-")
        dd = (f"{d['max_levels']} / {d['mean_levels']:.3f} / {100 * d['share_differing']:.2f}%"
              if d else "-")
        out.append(f"| {kind} | {f.get('max_abs_diff', float('nan')):.2e} "
                   f"({f.get('rel_diff', float('nan')):.1e}) | {strict} | {dd} |")
    if "ema" in res:
        e = res["ema"]
        out += ["", f"EMA update ({e['updates']} updates, {e['tensors']} tensors): "
                f"{'bitwise equal' if e['bitwise'] else 'not bitwise equal'}, max abs diff "
                f"{e['max_abs_diff']:.2e} (relative {e['max_rel_diff']:.1e})."]
    return out


def _resume(res: dict) -> list[str]:
    if not res.get("processes"):
        return []
    out = ["", "## 2. Kill and resume", "",
           f"{res.get('model')}, {res.get('images')} {res.get('data')} images, batch "
           f"{res.get('batch')} ({res.get('steps_per_epoch')} steps per epoch), 2 epochs; "
           f"{res.get('deterministic')}.", "",
           "| process | exit status | seconds |", "|---|---:|---:|"]
    for name, p in res["processes"].items():
        state = "running" if p.get("exit_status") is None else p["exit_status"]
        out.append(f"| {name} | {state} | {p.get('seconds', '-')} |")
    if "killed_at" in res:
        k = res["killed_at"]
        out += ["", f"Killed (SIGKILL) with the resume state at step {k['step']} (epoch "
                f"{k['epoch_done'] + 1}, batch {k['batch']})."]
    for key, label in (("resumed_vs_straight", "resumed vs uninterrupted"),
                       ("straight_vs_straight_again", "uninterrupted vs uninterrupted")):
        c = res.get(key)
        if c:
            out += ["", f"{label}: " + ", ".join(_same(c, g)
                                                for g in ("weights", "ema", "adam_moments"))]
    if res.get("nondeterministic_ops"):
        out += ["", "Operations that warned of no deterministic kernel:", ""]
        out += [f"- {op[:200]}" for op in res["nondeterministic_ops"][:10]]
    ev = res.get("evaluate")
    if ev:
        out += ["", f"`{ev['command']}`: exit {ev.get('exit_status')}, {ev.get('seconds', '-')} s."]
        if ev.get("rows"):
            out += ["", "| epoch | weights | path | FID | KID | images | seconds |",
                    "|---:|---|---|---:|---:|---:|---:|"]
            for r in ev["rows"]:
                out.append(f"| {r['epoch']} | {r['weights']} | {r['path']} | {r['fid']} | "
                           f"{r['kid']} | {r['num_images']} | {r['seconds']} |")
    return out


def _same(cmp: dict, group: str) -> str:
    g = cmp[group]
    if g["bitwise"]:
        return f"{group} bitwise equal"
    return f"{group} max abs diff {g['max_abs_diff']:.3e}"


def _throughput(res: dict) -> list[str]:
    if not res.get("config"):
        return []
    c = res["config"]
    out = ["", "## 3. Throughput", "",
           f"{c['model_size']}, training batch {c['train_batch']} ({c['train_warmup']} warm-up, "
           f"{c['train_reps']} timed steps: median (min-max)); {c['harness']}.", "",
           "| model | variant | training img/s | step | peak memory | compile |",
           "|---|---|---:|---:|---:|---:|"]
    for kind, variants in res.get("train", {}).items():
        for v in TRAIN_VARIANTS:
            r = variants.get(v)
            if r is None:
                continue
            step = f"{1e3 * r['median_s']:.1f} ms" if "median_s" in r else "-"
            comp = f"{r['compile_s']:.1f} s" if "compile_s" in r else "-"
            out.append(f"| {kind} | {v} | {_ips(r)} | {step} | {_gib(r.get('memory'))} | "
                       f"{comp} |")
    for kind, s in res.get("ema_share", {}).items():
        out.append("")
        out.append(f"EMA update, {kind}: {1e3 * s['ema_update_s']:.2f} ms = "
                   f"{s['fp32_percent']:.2f}% of an fp32 step, {s['fastest_percent']:.2f}% of "
                   f"a {s['fastest_variant']} step.")
    if res.get("sampling"):
        out += ["", "| model | DDIM sampling img/s (18 steps, fp32) | batch | peak memory |",
                "|---|---:|---:|---:|"]
        for kind, r in res["sampling"].items():
            out.append(f"| {kind} | {_ips(r)} | {r.get('batch', '-')} | "
                       f"{_gib(r.get('memory'))} |")
    ev = res.get("evaluation", {})
    if ev:
        out += ["", "Evaluation's other costs:"]
        f = ev.get("features")
        if f:
            out.append(f"- feature extraction: {_ips(f)} img/s ({f.get('network', '')}), peak "
                       f"{_gib(f.get('memory'))}" if "images_per_s" in f
                       else f"- feature extraction: {f.get('error')}")
        h = ev.get("heatmap")
        if h:
            out.append(f"- error heatmap: {h['per_cell_s']:.3g} s per cell ({h['grid']}x"
                       f"{h['grid']} grid, {h['images']} images, {h['probes']} probes); "
                       f"{h['per_cell_default_s']:.3g} s per cell at eval.heatmap's defaults"
                       if "per_cell_s" in h else f"- error heatmap: {h.get('error')}")
        b = ev.get("bootstrap")
        if b:
            out.append(f"- FID bootstrap: {b['per_replicate_s']:.3g} s per replicate "
                       f"({b['dim']}-d, {b['images']:,} images; square root once "
                       f"{b['setup_s']:.2f} s)" if "per_replicate_s" in b
                       else f"- FID bootstrap: {b.get('error')}")
        w = ev.get("checkpoint_writes")
        if w:
            out.append(f"- checkpoint writes (LIFT, from the device, fsync and rename): resume "
                       f"state {w['resume_bytes'] / 1e6:.0f} MB in {w['resume_write_s']:.2f} s, "
                       f"snapshot {w['snapshot_bytes'] / 1e6:.0f} MB in "
                       f"{w['snapshot_write_s']:.2f} s" if "resume_write_s" in w
                       else f"- checkpoint writes: {w.get('error') or w.get('unfinished')}")
    return out


def _projection(res: dict) -> list[str]:
    p = res.get("projection")
    if not p:
        return []
    proto = p["protocol"]
    out = ["", "## 4. Projected cost of the default study", "",
           f"Figures from: **{p['device_figures']}**. {proto['epochs']} epochs of "
           f"{proto['images']:,} images (batch {proto['batch']}, {proto['steps_per_epoch']} "
           f"steps per epoch); {proto['checkpoints']} checkpoints x {proto['weight_sets']} weight "
           f"sets x {proto['eval_seeds']} seed(s) x {proto['eval_images']:,} images x "
           f"{proto['eval_steps']} calls; {proto['runs_per_model']} run(s) per model.", "",
           "| model | training h | sample grids h | checkpoint writes h | eval h (sampling / "
           "features / heatmap / bootstrap) | per run h | GPU-hours |",
           "|---|---:|---:|---:|---|---:|---:|"]
    for m, v in p["per_model"].items():
        b = v["eval_breakdown_hours"]
        out.append(f"| {m} | {_h(v['train_hours'])} | {_h(v['train_grids_hours'])} | "
                   f"{_h(v['checkpoint_writes_hours'])} | "
                   f"{_h(v['eval_hours'])} ({_h(b['sampling'])} / {_h(b['features'])} / "
                   f"{_h(b['heatmap'])} / {_h(b['bootstrap'])}) | {_h(v['run_hours'])} | "
                   f"{_h(v['gpu_hours'])} |")
    goal = {True: "meets", False: "misses", None: "cannot say (incomplete)"}[p["meets_goal"]]
    wall = ", ".join(f"{n} GPU(s) {_h(h)} h" for n, h in p["wall_hours"].items())
    out += ["", f"Whole default study: **{_h(p['gpu_hours_total'])} GPU-hours** (with fp32 "
            f"training: {_h(p['gpu_hours_total_fp32_training'])}); wall: {wall}. Goal <= "
            f"{p['goal_gpu_hours']:g} GPU-hours: **{goal}**"
            + (f" (needs {p['speedup_needed']:.1f}x less)" if p["meets_goal"] is False else "")
            + "." + (f" Wall hours: {p['wall_note']}." if p.get("wall_note") else ""),
            "", "Assumed:", ""]
    out += [f"- {a}" for a in p.get("assumed", [])]
    return out
