"""The report's uncertainty on synthetic studies with known per-seed values (issue 14): mean ±
std over sampling seeds, over training seeds where several, paired EMA - raw with t and
bootstrap intervals and significance marks, KID and precision/recall columns and figure, the
sentences the report writes about them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_runs import known_fid, known_metrics, write_run, write_study

from analysis.report import make_report
from explore.run.results import format_replicates

SAMPLE_SEEDS = (0, 1, 2)
NOISE = {0: -0.5, 1: 0.0, 2: 0.5}      # each sampling seed's noise, shared by raw and EMA
EMA_OWN = {0: 0.3, 1: -0.1, 2: -0.2}   # an average's own share: sd 0.2646, mean 0
# t(0.975, 2) * 0.2646 / sqrt(3) = 0.6573: the half-width of every EMA - raw interval below


def _read(path: Path) -> dict[str, list[str]]:
    table = pd.read_csv(path, index_col=0, dtype=str, keep_default_na=False)
    return {row: list(values) for row, values in table.iterrows()}


def _fid(model: str):
    """raw: STUDY.md + the seed's noise; EMA 0.9999: STUDY.md EMA + noise + its own share;
    EMA 0.999: raw + 0.2 + its own share (a difference within the noise)."""
    def fid(path, weights_id, epoch, sample_seed):
        raw = known_fid(model, path, "raw", epoch) + NOISE[sample_seed]
        if weights_id == "raw":
            return raw
        if weights_id == "ema@0.9999":
            return (known_fid(model, path, weights_id, epoch) + NOISE[sample_seed]
                    + EMA_OWN[sample_seed])
        return raw + 0.2 + EMA_OWN[sample_seed]
    return fid


@pytest.fixture(scope="module")
def one_training_seed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evidence") / "study"
    for model in ("baseline", "lift"):
        fid = _fid(model)
        write_run(root, f"{model}-s0", model=model, seed=0, ema_decays=[0.9999, 0.999], fid=fid,
                  sample_seeds=SAMPLE_SEEDS, protocol={"num_images": 512}, train_images=2048,
                  extra=lambda p, w, e, q, fid=fid: known_metrics(w, fid(p, w, e, q)))
    return make_report(study_dir=root, formats=("png",))


def test_results_table_cells_from_known_per_seed_values(one_training_seed):
    out = one_training_seed.parent
    assert _read(out / "results_ema0.9999.csv") == {
        "Baseline best": ["33.07 ± 0.50 (n=3) @ 200ep", "27.90 ± 0.26 (n=3) @ 400ep",
                          "-5.17 [-5.83, -4.51] *"],
        "Baseline @ final epoch": ["59.37 ± 0.50 (n=3)", "38.62 ± 0.26 (n=3)",
                                   "-20.75 [-21.41, -20.09] *"],
        "LIFT DP-Total best": ["36.65 ± 0.50 (n=3) @ 2000ep", "28.91 ± 0.26 (n=3) @ 400ep",
                               "-7.74 [-8.40, -7.08] *"],
        "LIFT DP-Total @ final epoch": ["36.65 ± 0.50 (n=3)", "38.55 ± 0.26 (n=3)",
                                        "+1.90 [+1.24, +2.56] *"],
    }
    # EMA 0.999 is raw + 0.2: within the noise, no star
    assert _read(out / "results_ema0.999.csv")["Baseline best"] == [
        "33.07 ± 0.50 (n=3) @ 200ep", "33.27 ± 0.26 (n=3) @ 200ep", "+0.20 [-0.46, +0.86]"]


def test_report_says_what_was_compared_and_what_is_significant(one_training_seed):
    text = one_training_seed.read_text()
    assert ("| Images | 512 generated per sampling seed vs 512 real: a random subset of the "
            "2048 training images (subset seed 42, eval.subset_seed), the same for every row "
            "and sampling seed |") in text
    assert "| Sampling seeds | Baseline: 0, 1, 2; LIFT DP-Total: 0, 1, 2 |" in text
    assert "t-interval over sampling seeds" in text
    assert ("- **Baseline**: FID of EMA 0.9999 minus raw at the best epochs (raw 200, EMA 400): "
            "-5.17 [-5.83, -4.51] (t over 3 sampling seeds): significant, EMA better; at the "
            "final epoch 2000: -20.75 [-21.41, -20.09] (t over 3 sampling seeds): significant, "
            "EMA better.") in text
    assert ("at the final epoch 2000: +1.90 [+1.24, +2.56] (t over 3 sampling seeds): "
            "significant, EMA worse.") in text
    assert ("- **Baseline**: FID of EMA 0.999 minus raw at the best epochs (raw 200, EMA 200): "
            "+0.20 [-0.46, +0.86] (t over 3 sampling seeds): not significant;") in text
    # LIFT's raw FID is lowest at its last epoch: not plateaued, and the EMA's lag is given
    assert ("- LIFT DP-Total: raw FID is lowest at the last evaluated epoch (2000): training "
            "has not plateaued, so an EMA that trails the raw weights is expected to be worse; "
            "EMA 0.9999 lags them by 40.7 epochs (lag_epochs).") in text
    assert "- Baseline: raw FID is lowest at the last" not in text  # its best is epoch 200


def test_kid_precision_recall_by_epoch_and_figure(one_training_seed):
    out = one_training_seed.parent
    table = pd.read_csv(out / "fid_by_epoch.csv", index_col=0, dtype=str,
                        keep_default_na=False)
    # KID = FID / 1000 per row, shown x 10^3: the FID cells' numbers, without the count
    assert table.loc["200", "Baseline raw KID×10³"] == "33.07 ± 0.50"
    assert table.loc["400", "LIFT DP-Total EMA 0.9999 KID×10³"] == "28.91 ± 0.26"
    assert table.loc["200", "Baseline raw precision"] == "0.600 ± 0.000"
    assert table.loc["200", "Baseline EMA 0.9999 recall"] == "0.400 ± 0.000"
    assert table.loc["200", "Baseline raw"] == "33.07 ± 0.50 (n=3)"
    text = one_training_seed.read_text()
    assert "### KID, precision and recall by epoch" in text and "**KID×10³**" in text
    png = out / "prc_vs_epoch.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    assert "](prc_vs_epoch.png)" in text


def test_std_is_over_training_seeds_when_there_are_several(tmp_path):
    """2 training x 3 sampling seeds: the training seeds are offset by -/+0.1 and the sampling
    seeds by -0.5, 0, +0.5: the std over the 2 training-seed means is 0.14; over all 6 values
    it would be 0.45."""
    write_study(tmp_path / "s", seeds=(0, 1), seed_step=0.2, decays=(0.9999,),
                sample_seeds=SAMPLE_SEEDS, sample_step=0.5)
    report = make_report(study_dir=tmp_path / "s", formats=("png",))
    cells = _read(report.parent / "results_ema0.9999.csv")
    assert cells["Baseline best"] == ["33.07 ± 0.14 (n=2×3) @ 200ep",
                                      "27.90 ± 0.14 (n=2×3) @ 400ep", "-5.17 [-5.17, -5.17] *"]
    text = report.read_text()
    assert "std over training seeds, each the mean of its sampling seeds" in text
    assert "(t over 2 training seeds)" in text


def _boot_extra(model: str, reps: np.ndarray, own: np.ndarray, boot_seed: int = 0):
    """Replicates: raw_b = FID + reps_b; EMA_b = FID + reps_b + own_b (paired)."""
    def extra(path, weights_id, epoch, sample_seed):
        fid = known_fid(model, path, weights_id, epoch)
        values = fid + reps + (own if weights_id != "raw" else 0.0)
        seed = boot_seed if weights_id == "raw" or epoch != 2000 else boot_seed + 1
        return {"boot_seed": seed, "fid_boot": format_replicates(values)}
    return extra


def test_one_seed_uses_the_paired_bootstrap(tmp_path):
    rng = np.random.default_rng(0)
    reps, own = rng.normal(0, 2.0, 200), rng.normal(0, 0.4, 200)
    write_run(tmp_path / "s", "baseline-s0", model="baseline", seed=0, ema_decays=[0.9999],
              extra=_boot_extra("baseline", reps, own))
    report = make_report(study_dir=tmp_path / "s", formats=("png",))
    cells = _read(report.parent / "results_ema0.9999.csv")
    # the shared part (sd 2) cancels: the interval is -5.17 + the percentiles of own (sd 0.4)
    lo, hi = np.percentile(np.round(own, 4), [2.5, 97.5]) - 5.17
    assert cells["Baseline best"] == ["33.07 @ 200ep", "27.90 @ 400ep",
                                      f"-5.17 [{lo:+.2f}, {hi:+.2f}] *"]
    # the EMA's replicates at epoch 2000 were drawn with another bootstrap seed: not paired,
    # so no interval (and no star)
    assert cells["Baseline @ final epoch"] == ["59.37", "38.62", "-20.75"]
    text = report.read_text()
    assert "percentile bootstrap over the generated images' features" in text
    assert "(bootstrap over images (200)): significant, EMA better" in text


def test_missing_sampling_seeds_are_listed(tmp_path):
    def fid(path, weights_id, epoch, sample_seed):
        if sample_seed == 2 and epoch == 400:
            return None
        return known_fid("baseline", path, weights_id, epoch) + NOISE[sample_seed]

    write_run(tmp_path / "s", "baseline-s0", model="baseline", seed=0, ema_decays=[0.9999],
              fid=fid, sample_seeds=SAMPLE_SEEDS)
    text = make_report(study_dir=tmp_path / "s", formats=("png",)).read_text()
    assert "- Baseline raw: epoch 400 averaged without sampling seed(s) 2" in text
    assert "- Baseline EMA 0.9999: epoch 400 averaged without sampling seed(s) 2" in text


def test_small_fids_keep_enough_decimals():
    """Smoke-size FIDs are below 1: a narrow interval or a small std gets up to 4 decimals
    instead of reading "+0.13 [+0.13, +0.13]" or "± 0.00"."""
    from analysis.stats import Interval
    from analysis.tables import fmt_gain, spread_decimals

    assert fmt_gain(Interval(0.129, 0.1261, 0.132, "t", 3)) == "+0.1290 [+0.1261, +0.1320] *"
    assert fmt_gain(Interval(0.584, 0.576, 0.592, "t", 3)) == "+0.584 [+0.576, +0.592] *"
    assert fmt_gain(Interval(-5.17, -5.17 - 1e-15, -5.17 + 1e-15, "t", 3)) == (
        "-5.17 [-5.17, -5.17] *")
    assert fmt_gain(Interval(0.2, -0.46, 0.86, "t", 3)) == "+0.20 [-0.46, +0.86]"
    assert [spread_decimals(s) for s in (0.0052, 0.011, 0.07, 0.5, float("nan"))] == [
        4, 3, 2, 2, 2]
