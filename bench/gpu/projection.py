"""Step 4 of the GPU check: what the default study costs, projected from step 3's measured rates.

`study_protocol()` reads the study's defaults from conf/ (python -m launch.study with no
overrides: conf/launch_study.yaml, conf/study/ema_vs_raw.yaml, conf/train.yaml,
conf/eval/default.yaml) into a `Protocol`; `project(rates, protocol)` is the arithmetic, a pure
function (tests/test_gpu_check.py checks it by hand):

- runs: per model, one per (decay, seed) (one per seed with study.ema_bank);
- training per run: epochs x (images // batch) x batch images at the training rate, plus the
  raw-vs-EMA sample grids (every `sample_every` epochs and after the last, `sample_images` per
  weight set) at the sampling rate;
- evaluation per run: rows = checkpoints x weight sets x paths x sampling seeds, each sampling
  `num_images` images (18 steps) and extracting their features; LIFT's DP paths also an error
  heatmap per (checkpoint, weight set) (grid^2 cells); with one sampling seed, `bootstrap`
  replicate FIDs per row; the real images' features once for the study (cached);
- wall hours on N GPUs: one job per GPU, a run's evaluation after its training, runs placed
  longest first on the GPU that frees first (as the study's device queue does).

- checkpoint writes per run: the resume state after every epoch and a snapshot at every
  checkpoint, at the measured write times.

Not included (not measured): process start-up, the mid-epoch resume states
(checkpoint.resume_every_min, only for epochs longer than 10 minutes), the metrics' own
arithmetic besides the bootstrap (FID/KID of one feature set: seconds).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass, field

from .context import STEP_NAMES, Outcome
from .throughput import HEATMAP_DEFAULT_IMAGES, HEATMAP_DEFAULT_PROBES, fastest_variant

STUDY_IMAGES = 15_803  # AFHQv2 train split (STUDY.md): data.num_images=null at the reference


@dataclass
class Protocol:
    models: list[str]
    runs_per_model: int          # (decays x seeds), or seeds with an EMA bank
    epochs: int
    images: int                  # training images
    batch: int
    sample_every: int            # training sample grids (0: none)
    sample_images: int
    weight_sets: int             # raw + every EMA of a run
    checkpoint_every: int
    eval_images: int
    eval_steps: int
    eval_seeds: int
    paths: dict[str, int]        # model -> sampling paths evaluated
    heatmap_cells: dict[str, int]  # model -> cells per heatmap (0: no DP path, no heatmap)
    bootstrap: int               # replicates per row (0 with several seeds)
    goal_gpu_hours: float = 12.0
    source: list[str] = field(default_factory=list)

    @property
    def steps_per_epoch(self) -> int:
        return self.images // self.batch  # drop_last

    @property
    def checkpoints(self) -> int:
        return self.epochs // self.checkpoint_every + (1 if self.epochs % self.checkpoint_every
                                                       else 0)

    @property
    def sample_grids(self) -> int:
        if not self.sample_every:
            return 0
        return self.epochs // self.sample_every + (1 if self.epochs % self.sample_every else 0)


def study_protocol() -> Protocol:
    """The default study's numbers, read from conf/ as `python -m launch.study` composes them."""
    from omegaconf import OmegaConf

    from explore.core.config import compose

    cfg = compose("launch_study")
    study = cfg.study
    train_over = OmegaConf.from_dotlist([str(o) for o in study.train])
    cfg = OmegaConf.merge(cfg, train_over)
    decays = list(study.decays) if study.decays else [cfg.ema.decay]
    seeds = list(study.seeds)
    bank = bool(study.ema_bank or study.get("bema"))
    runs = len(seeds) if bank else len(decays) * len(seeds)
    emas = (len(decays) if bank else 1) + len(study.get("power") or []) + \
        (1 if study.get("bema") else 0)
    e = cfg.eval
    weight_sets = len(e.weights) if e.weights else 1 + emas
    paths = {m: (1 if m == "baseline" else len(e.paths)) for m in study.models}
    dp = any(p in ("dp_64", "dp_total") for p in e.paths)
    cells = {m: (int(e.heatmap.grid_size) ** 2 if m == "lift" and dp else 0)
             for m in study.models}
    images = int(cfg.data.num_images) if cfg.data.get("num_images") else STUDY_IMAGES
    return Protocol(
        models=list(study.models), runs_per_model=runs, epochs=int(cfg.trainer.epochs),
        images=images, batch=int(cfg.trainer.batch_size),
        sample_every=int(cfg.trainer.sample_every), sample_images=int(cfg.trainer.sample_images),
        weight_sets=weight_sets, checkpoint_every=int(cfg.checkpoint.every),
        eval_images=int(e.num_images) if e.num_images else images,
        eval_steps=int(e.num_steps), eval_seeds=len(e.seeds), paths=paths,
        heatmap_cells=cells, bootstrap=int(e.bootstrap) if len(e.seeds) == 1 else 0,
        source=["python -m launch.study defaults: conf/launch_study.yaml + study=ema_vs_raw "
                f"(models {list(study.models)}, decays {decays}, seeds {seeds}, study.train "
                f"{list(study.train)}), conf/train.yaml, conf/eval/default.yaml (seeds "
                f"{list(e.seeds)}, paths {list(e.paths)}, weights {e.weights or 'raw + EMAs'}, "
                f"num_images {e.num_images or f'the training set ({images:,})'}, bootstrap "
                f"{e.bootstrap}, heatmap {e.heatmap.grid_size}x{e.heatmap.grid_size})",
                f"data: AFHQv2 train, {images:,} images (STUDY.md)"])


def project(rates: dict, p: Protocol, gpu_counts=(1, 2, 4, 8)) -> dict:
    """Hours of the study from measured rates.

    rates: {"models": {model: {"train_img_s", "sample_img_s", "heatmap_cell_s" (LIFT)}},
            "feature_img_s", "bootstrap_replicate_s", "resume_write_s", "snapshot_write_s"};
    a model without rates is left out (and named in `missing`); a missing write or bootstrap
    time counts as 0.
    """
    feat = rates["feature_img_s"]
    boot = rates.get("bootstrap_replicate_s") or 0.0
    per_model, missing, jobs = {}, [], []
    for m in p.models:
        r = rates["models"].get(m)
        if not r or not r.get("train_img_s") or not r.get("sample_img_s"):
            missing.append(m)
            continue
        train_s = p.epochs * p.steps_per_epoch * p.batch / r["train_img_s"]
        grids_s = p.sample_grids * p.sample_images * p.weight_sets / r["sample_img_s"]
        rows = p.checkpoints * p.weight_sets * p.paths[m] * p.eval_seeds
        sampling_s = rows * p.eval_images / r["sample_img_s"]
        features_s = rows * p.eval_images / feat
        heatmaps = p.checkpoints * p.weight_sets if p.heatmap_cells[m] else 0
        heatmap_s = heatmaps * p.heatmap_cells[m] * (r.get("heatmap_cell_s") or 0.0)
        bootstrap_s = rows * p.bootstrap * boot
        eval_s = sampling_s + features_s + heatmap_s + bootstrap_s
        # the resume state after every epoch, a snapshot at every checkpoint
        writes_s = (p.epochs * (rates.get("resume_write_s") or 0.0)
                    + p.checkpoints * (rates.get("snapshot_write_s") or 0.0))
        run_s = train_s + grids_s + writes_s + eval_s
        per_model[m] = {
            "runs": p.runs_per_model, "eval_rows_per_run": rows,
            "train_hours": train_s / 3600, "train_grids_hours": grids_s / 3600,
            "checkpoint_writes_hours": writes_s / 3600,
            "eval_hours": eval_s / 3600,
            "eval_breakdown_hours": {"sampling": sampling_s / 3600,
                                     "features": features_s / 3600,
                                     "heatmap": heatmap_s / 3600,
                                     "bootstrap": bootstrap_s / 3600},
            "run_hours": run_s / 3600, "gpu_hours": p.runs_per_model * run_s / 3600}
        jobs += [run_s] * p.runs_per_model
    real_s = p.eval_images / feat  # the real images' features: once, cached
    total_s = sum(jobs) + real_s
    wall = {str(n): (makespan(jobs, n) + real_s) / 3600 for n in gpu_counts}
    gpu_hours = total_s / 3600
    note = (f"the study is {len(jobs)} run(s), each trained then evaluated on one GPU: more "
            f"than {len(jobs)} GPU(s) shorten nothing" if jobs and max(gpu_counts) > len(jobs)
            else "")
    return {"per_model": per_model, "missing": missing, "wall_note": note,
            "real_features_hours": real_s / 3600,
            "gpu_hours_total": gpu_hours, "wall_hours": wall,
            "goal_gpu_hours": p.goal_gpu_hours,
            "meets_goal": gpu_hours <= p.goal_gpu_hours if not missing else None,
            "speedup_needed": (gpu_hours / p.goal_gpu_hours
                               if gpu_hours > p.goal_gpu_hours else 1.0),
            "protocol": {**asdict(p), "steps_per_epoch": p.steps_per_epoch,
                         "checkpoints": p.checkpoints, "sample_grids": p.sample_grids}}


def makespan(durations: list[float], n: int) -> float:
    """Longest-first list scheduling on n identical devices: when the last job ends."""
    loads = [0.0] * max(1, n)
    heapq.heapify(loads)
    for d in sorted(durations, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + d)
    return max(loads) if durations else 0.0


def rates_from(throughput: dict) -> tuple[dict, list[str]]:
    """Step 3's result as `project`'s rates, and the options it assumed."""
    models, assumed = {}, []
    train = throughput.get("train", {})
    for m, variants in train.items():
        best = fastest_variant(variants)
        samp = throughput.get("sampling", {}).get(m, {})
        if best is None or "images_per_s" not in samp:
            continue
        models[m] = {"train_img_s": variants[best]["images_per_s"]["median"],
                     "train_variant": best,
                     "sample_img_s": samp["images_per_s"]["median"]}
        assumed.append(f"{m} trains with the fastest measured variant, {best} "
                       f"({models[m]['train_img_s']:.1f} img/s at batch "
                       f"{variants[best]['batch']})")
        if "fp32" in variants and "images_per_s" in variants["fp32"]:
            models[m]["train_img_s_fp32"] = variants["fp32"]["images_per_s"]["median"]
    ev = throughput.get("evaluation", {})
    hm = ev.get("heatmap", {})
    if "lift" in models and "per_cell_default_s" in hm:
        models["lift"]["heatmap_cell_s"] = hm["per_cell_default_s"]
        assumed.append(f"a heatmap cell ({HEATMAP_DEFAULT_IMAGES} images, "
                       f"{HEATMAP_DEFAULT_PROBES} probes) takes {hm['per_cell_default_s']:.3g} s"
                       + (f" (measured with {hm['images']} images and {hm['probes']} probe(s), "
                          f"scaled linearly)" if hm.get("scaled_to_default") else ""))
    writes = ev.get("checkpoint_writes", {})
    rates = {"models": models,
             "feature_img_s": ev.get("features", {}).get("images_per_s", {}).get("median"),
             "bootstrap_replicate_s": ev.get("bootstrap", {}).get("per_replicate_s"),
             "resume_write_s": writes.get("resume_write_s"),
             "snapshot_write_s": writes.get("snapshot_write_s")}
    if "resume_write_s" in writes:
        assumed.append(f"both models write LIFT's measured checkpoint sizes: the resume state "
                       f"({writes['resume_bytes'] / 1e6:.0f} MB, {writes['resume_write_s']:.2f} "
                       f"s) every epoch, a snapshot ({writes['snapshot_bytes'] / 1e6:.0f} MB, "
                       f"{writes['snapshot_write_s']:.2f} s) every checkpoint")
    assumed += ["evaluation samples in fp32 at batch 64 (explore.evaluate has no bf16 option), "
                "18 model calls per image; LIFT's DP-Total path costs what the measured "
                "diagonal path costs",
                "feature extraction at the rate of torch-fidelity's Inception-v3 network "
                "(random weights) alone; the data loader around it is not counted"]
    return rates, assumed


def step_projection(ctx) -> Outcome:
    res = ctx.result
    throughput = ctx.check.report["steps"][2]["result"]
    rates, assumed = rates_from(throughput)
    res["rates"] = rates
    if not rates["models"] or not rates["feature_img_s"]:
        return "skipped", (f"no projection: step 3 ({STEP_NAMES[3]}) measured no training, "
                           f"sampling or feature rates")
    if rates["bootstrap_replicate_s"] is None:
        assumed.append("bootstrap replicates not measured: counted as free")
    protocol = study_protocol()
    out = project(rates, protocol, ctx.check.args.gpu_counts)
    # the same study at fp32 training, for comparison
    fp32 = {m: {**r, "train_img_s": r.get("train_img_s_fp32", r["train_img_s"])}
            for m, r in rates["models"].items()}
    out["gpu_hours_total_fp32_training"] = project({**rates, "models": fp32}, protocol,
                                                   ctx.check.args.gpu_counts)["gpu_hours_total"]
    out["assumed"] = assumed + protocol.source
    out["device_figures"] = ("GPU" if ctx.plan.cuda else
                             "CPU at smoke model size: a test of the arithmetic, NOT meaningful "
                             "for a GPU")
    res["projection"] = out
    ctx.check.report["projected"] = {
        "gpu_hours_total": out["gpu_hours_total"], "wall_hours": out["wall_hours"],
        "goal_gpu_hours": out["goal_gpu_hours"], "meets_goal": out["meets_goal"],
        "per_model_gpu_hours": {m: v["gpu_hours"] for m, v in out["per_model"].items()},
        "figures_from": out["device_figures"]}
    n_max = str(max(ctx.check.args.gpu_counts))
    goal = ("meets the goal" if out["meets_goal"] else
            "misses the goal" if out["meets_goal"] is False else "incomplete")
    models = ", ".join(f"{m} {v['train_hours']:.2f} h training + {v['eval_hours']:.2f} h "
                       f"evaluation" for m, v in out["per_model"].items())
    verdict = (f"{_h(out['gpu_hours_total'])} GPU-hours for the default study ({models}); "
               f"{_h(out['wall_hours'][n_max])} h wall on {n_max} GPUs; {goal} of <= "
               f"{out['goal_gpu_hours']:g} GPU-hours"
               + (f" (needs {out['speedup_needed']:.1f}x)" if out["meets_goal"] is False else ""))
    if not ctx.plan.cuda:
        verdict += " [CPU figures at smoke size, not GPU figures]"
    if out["missing"]:
        return "warn", verdict + f"; no rates for {', '.join(out['missing'])}"
    return "ok", verdict


def _h(hours: float) -> str:
    if not math.isfinite(hours):
        return str(hours)
    return f"{hours:.3g}" if hours < 1000 else f"{hours:,.0f}"
