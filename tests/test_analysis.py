"""Tests of the analysis stage on synthetic result files with known optima.

The synthetic FIDs are the STUDY.md table plus a per-seed offset of (seed - 1) * 0.1 for
seeds 0, 1, 2, so every seed-mean is a STUDY.md number and every std is exactly 0.10 (see
tests/synthetic_runs.py for the rules, e.g. EMA 0.999 = raw - 3).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.text import Text
from synthetic_runs import EPOCHS, known_fid, write_run, write_study

from analysis.figures import ema_figure, fid_figure, training_figure
from analysis.load import NoRunsFoundError, dedupe_networks, ema_diagnostics, load_study
from analysis.report import FormatError, make_report
from analysis.stats import summarize
from analysis.tables import latex_by_hand, results_table, to_latex

REPO = Path(__file__).resolve().parents[1]
INCEPTION = "inception-v3-compat"

# EMA - raw is paired per seed: every seed's offset cancels, so the difference is the same in
# every seed and its t-interval has no width (tests/test_evidence.py has seeds that disagree).
EXPECTED_EMA_9999 = {
    "Baseline best": ["33.07 ± 0.10 (n=3) @ 200ep", "27.90 ± 0.10 (n=3) @ 400ep",
                      "-5.17 [-5.17, -5.17] *"],
    "Baseline @ final epoch": ["59.37 ± 0.10 (n=3)", "38.62 ± 0.10 (n=3)",
                               "-20.75 [-20.75, -20.75] *"],
    "LIFT DP-Total best": ["36.65 ± 0.10 (n=3) @ 2000ep", "28.91 ± 0.10 (n=3) @ 400ep",
                           "-7.74 [-7.74, -7.74] *"],
    "LIFT DP-Total @ final epoch": ["36.65 ± 0.10 (n=3)", "38.55 ± 0.10 (n=3)",
                                    "+1.90 [+1.90, +1.90] *"],
}
# EMA 0.999 = raw - 3 at every epoch: same best epochs as raw, EMA - raw -3.00 everywhere.
EXPECTED_EMA_999 = {
    "Baseline best": ["33.07 ± 0.10 (n=3) @ 200ep", "30.07 ± 0.10 (n=3) @ 200ep",
                      "-3.00 [-3.00, -3.00] *"],
    "Baseline @ final epoch": ["59.37 ± 0.10 (n=3)", "56.37 ± 0.10 (n=3)",
                               "-3.00 [-3.00, -3.00] *"],
    "LIFT DP-Total best": ["36.65 ± 0.10 (n=3) @ 2000ep", "33.65 ± 0.10 (n=3) @ 2000ep",
                           "-3.00 [-3.00, -3.00] *"],
    "LIFT DP-Total @ final epoch": ["36.65 ± 0.10 (n=3)", "33.65 ± 0.10 (n=3)",
                                    "-3.00 [-3.00, -3.00] *"],
}


def _cells(table: pd.DataFrame) -> dict[str, list[str]]:
    return {row: list(values) for row, values in table.iterrows()}


def _read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, index_col=0, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Baseline and LIFT, seeds 0-2, one run per (model, decay, seed), decays 0.9999, 0.999."""
    root = tmp_path_factory.mktemp("study")
    write_study(root / "ema_vs_raw")
    return root / "ema_vs_raw"


@pytest.fixture(scope="module")
def report(study) -> Path:
    return make_report(study_dir=study)


def test_results_table_every_cell(report):
    out = report.parent
    assert report == out / "report.md" and out == report.parents[0]
    assert _cells(_read_table(out / "results_ema0.9999.csv")) == EXPECTED_EMA_9999
    assert _cells(_read_table(out / "results_ema0.999.csv")) == EXPECTED_EMA_999
    assert list(_read_table(out / "results_ema0.9999.csv").columns) == [
        "Without EMA", "With EMA", "EMA - raw"]
    markdown = (out / "results_ema0.9999.md").read_text()
    assert ("| Baseline best | 33.07 ± 0.10 (n=3) @ 200ep | 27.90 ± 0.10 (n=3) @ 400ep | "
            "-5.17 [-5.17, -5.17] * |") in markdown
    latex = (out / "results_ema0.9999.tex").read_text()
    row = (r"Baseline best & 33.07 $\pm$ 0.10 (n=3) @ 200ep & 27.90 $\pm$ 0.10 (n=3) @ 400ep & "
           r"-5.17 [-5.17, -5.17] * \\")
    assert row in latex


def test_epoch_table_matches_the_study_table(report):
    table = _read_table(report.parent / "fid_by_epoch.csv")
    assert list(table.columns) == [
        "Baseline raw", "LIFT DP-Total raw",
        "Baseline EMA 0.9999", "LIFT DP-Total EMA 0.9999",
        "Baseline EMA 0.999", "LIFT DP-Total EMA 0.999",
    ]
    assert list(table.index) == [str(e) for e in EPOCHS]
    assert table.loc["200", "Baseline raw"] == "33.07 ± 0.10 (n=3)"
    assert table.loc["400", "LIFT DP-Total EMA 0.9999"] == "28.91 ± 0.10 (n=3)"
    assert table.loc["2000", "LIFT DP-Total EMA 0.999"] == "33.65 ± 0.10 (n=3)"


def test_report_md_states_the_protocol_and_links_existing_files(report):
    text = report.read_text()
    for fact in ["| Dataset | afhqv2 |", "| Image size | 64x64 |",
                 "| Images | 15803 generated per sampling seed vs 15803 real: all 15803 training "
                 "images |",
                 "| Sampling steps | 18 |", f"| Feature extractor | {INCEPTION} |",
                 "| Training seeds | Baseline: 0, 1, 2; LIFT DP-Total: 0, 1, 2 |",
                 "| Sampling seeds | Baseline: 42; LIFT DP-Total: 42 |",
                 "| EMA decays | 0.9999, 0.999 |", "Nothing missing."]:
        assert fact in text
    assert text.count("## FID protocol:") == 1
    links = [part.split(")")[0] for part in text.split("](")[1:]]
    assert "fid_vs_epoch.png" in links and "results_ema0.999.tex" in links
    assert all((report.parent / link).is_file() for link in links)


def test_runs_grouped_by_everything_but_seed(study):
    loaded = load_study(study_dir=study)
    assert len(loaded.runs) == 12
    groups = loaded.runs.groupby("group")["seed"].apply(sorted).to_dict()
    assert groups == {
        "Baseline, EMA 0.999, afhqv2 64px": [0, 1, 2],
        "Baseline, EMA 0.9999, afhqv2 64px": [0, 1, 2],
        "LIFT, EMA 0.999, afhqv2 64px": [0, 1, 2],
        "LIFT, EMA 0.9999, afhqv2 64px": [0, 1, 2],
    }
    fid = loaded.fid
    assert set(fid.groupby(["group", "protocol"]).groups) == {
        (g, f"afhqv2 64px · 15803 images · 18 steps · {INCEPTION} · study schedule, "
            "final step study · real subset seed 42") for g in groups}
    assert set(fid["series"]) == {"Baseline", "LIFT DP-Total"}
    assert fid.loc[fid["weights"] == "raw", "decay"].isna().all()
    ema = fid[fid["weights"] == "ema"]
    assert (ema["decay"] == ema["ema_decay"]).all() and set(ema["decay"]) == {0.9999, 0.999}


def test_raw_rows_shared_across_decays_are_counted_once(study):
    fid = load_study(study_dir=study).fid
    raw = fid[fid["weights"] == "raw"]
    assert len(raw) == 2 * 2 * 3 * len(EPOCHS)  # models x decays x seeds x epochs, as written
    deduped = dedupe_networks(fid)
    raw_deduped = deduped[deduped["kind"] == "raw"]
    assert len(raw_deduped) == 2 * 3 * len(EPOCHS)
    assert (raw_deduped["repeats"] == 2).all() and (raw_deduped["fid_spread"] == 0).all()
    one = raw_deduped[(raw_deduped["model"] == "baseline") & (raw_deduped["seed"] == 0)]
    assert one["runs"].iloc[0] == "baseline-ema0.999-s0, baseline-ema0.9999-s0"

    right = summarize(deduped).query("series == 'Baseline' and variant == 'raw' and epoch == 200")
    assert right["n"].item() == 3 and right["std"].item() == pytest.approx(0.1)
    # Counting each raw row once per decay would claim 6 seeds and shrink the std; summarize
    # keys its values by (training seed, sampling seed), so even undeduped rows count once.
    undeduped = summarize(fid).query("series == 'Baseline' and variant == 'raw' and epoch == 200")
    assert undeduped["n"].item() == 3 and undeduped["std"].item() == pytest.approx(0.1)


def test_extra_decays_as_ema_at_columns_give_the_same_tables(tmp_path, study):
    """One run per seed tracking both decays (``ema`` + ``ema@0.999``), plus the per-decay
    runs in the same study: the 0.999 averages of both kinds of run are one measurement."""
    write_study(tmp_path, one_run_per_decay=False)
    fid = load_study(study_dir=tmp_path).fid
    assert set(fid["weights"]) == {"raw", "ema", "ema@0.999"}
    extra = fid[fid["weights"] == "ema@0.999"]
    assert (extra["decay"] == 0.999).all() and (extra["ema_decay"] == 0.9999).all()

    both = dedupe_networks(load_study(runs=[tmp_path, study]).fid)
    summary = summarize(both)
    assert (summary["n"] == 3).all()
    assert _cells(results_table(summary, "EMA 0.999")) == EXPECTED_EMA_999
    assert _cells(results_table(summary, "EMA 0.9999")) == EXPECTED_EMA_9999


def _add_extractor(run_dirs: list[Path], extractor: str, shift: float) -> None:
    """Evaluate every run again with another feature extractor (FIDs shifted by ``shift``)."""
    for run_dir in run_dirs:
        path = run_dir / "eval" / "fid.csv"
        rows = pd.read_csv(path)
        other = rows.assign(extractor=extractor, fid=rows["fid"] + shift)
        pd.concat([rows, other]).to_csv(path, index=False)


def test_two_extractors_are_never_put_in_one_table(tmp_path):
    runs = write_study(tmp_path / "study", seeds=(0, 1, 2), decays=(0.9999,))
    _add_extractor(runs, "clip-vit-b-32", shift=100.0)
    report = make_report(study_dir=tmp_path / "study", formats=("png",))
    out = report.parent
    tail = "-study-schedule-final-step-study-real-subset-seed-42"
    inception = out / f"afhqv2-64px-15803-images-18-steps-{INCEPTION}{tail}"
    clip = out / f"afhqv2-64px-15803-images-18-steps-clip-vit-b-32{tail}"
    assert _cells(_read_table(inception / "results_ema0.9999.csv")) == EXPECTED_EMA_9999
    shifted = _cells(_read_table(clip / "results_ema0.9999.csv"))
    assert shifted["Baseline best"] == ["133.07 ± 0.10 (n=3) @ 200ep",
                                        "127.90 ± 0.10 (n=3) @ 400ep", "-5.17 [-5.17, -5.17] *"]
    assert shifted["LIFT DP-Total @ final epoch"] == ["136.65 ± 0.10 (n=3)",
                                                      "138.55 ± 0.10 (n=3)",
                                                      "+1.90 [+1.90, +1.90] *"]
    for folder in (inception, clip):
        assert (folder / "fid_by_epoch.csv").is_file() and (folder / "fid_vs_epoch.png").is_file()
    text = report.read_text()
    assert text.count("## FID protocol:") == 2
    assert "**2 FID protocols.**" in text and "never put in one table" in text
    assert f"| Feature extractor | {INCEPTION} |" in text
    assert "| Feature extractor | clip-vit-b-32 |" in text


def test_missing_pieces_are_reported_not_papered_over(tmp_path, caplog, capsys):
    root = tmp_path / "study"
    for seed in (0, 1):
        # 10 steps per epoch: the 0.9999 EMA is below half trained weights until epoch 693.
        def fid(path, weights_id, epoch, seed=seed):
            if seed == 1 and epoch == 800:
                return None  # seed 1 not evaluated at epoch 800
            return known_fid("baseline", path, weights_id, epoch, offset=(seed - 0.5) * 0.1)

        write_run(root, f"baseline-s{seed}", model="baseline", seed=seed, ema_decays=[0.9999],
                  fid=fid, steps_per_epoch=10)
    # LIFT without EMA, not evaluated at the last epoch; one more LIFT run not evaluated.
    write_run(root, "lift-s0", model="lift", seed=0, epochs=EPOCHS[:-1])
    write_run(root, "lift-s1", model="lift", seed=1, ema_decays=[0.9999], evaluated=False)

    with caplog.at_level(logging.WARNING, logger="analysis"):
        report = make_report(study_dir=root, formats=("png",))
    expected = [
        "run lift-s1: not evaluated yet (no rows in eval/fid.csv)",
        "LIFT DP-Total: no EMA rows (only raw weights evaluated)",
        "epoch 2000 evaluated for Baseline but not for LIFT",
        "Baseline raw: epoch 800 averaged without seed(s) 1",
        "Baseline EMA 0.9999: epoch 800 averaged without seed(s) 1",
    ]
    # a mostly-initial EMA is measured, not missing: a warning (issue 16.4)
    warned = ("Baseline EMA 0.9999: EMA still mostly initial weights at epochs 200, 400, 600 "
              "(lowest post-init share 0.18): its FID reflects the initialisation, not training")
    text = report.read_text()
    missing = text.split("## Missing")[1].split("\n## ")[0]
    for message in expected:
        assert f"- {message}" in missing
        assert f"missing: {message}" in caplog.text
    assert missing.count("\n- ") == len(expected)
    warnings = text.split("## Warnings")[1].split("\n## ")[0]
    assert f"- {warned}" in warnings and f"warning: {warned}" in caplog.text

    table = _cells(_read_table(report.parent / "results_ema0.9999.csv"))
    # Best EMA epoch 400 had a mostly-initial EMA: marked, and the note says what it means.
    # Best EMA at 400 and raw at 200 are paired by seed; at 800 seed 1 is missing.
    assert table["Baseline best"] == ["33.07 ± 0.07 (n=2) @ 200ep", "27.90 ± 0.07 (n=2) @ 400ep †",
                                      "-5.17 [-5.17, -5.17] *"]
    assert table["Baseline @ final epoch"] == ["59.37 ± 0.07 (n=2)", "38.62 ± 0.07 (n=2)",
                                               "-20.75 [-20.75, -20.75] *"]
    assert table["LIFT DP-Total best"] == ["39.35 @ 400ep", "n/a", "n/a"]
    assert table["LIFT DP-Total @ final epoch"] == ["53.96", "n/a", "n/a"]
    assert "† EMA still mostly initial weights" in text
    assert "Final epoch (last evaluated): Baseline 2000, LIFT DP-Total 1800." in text
    printed = capsys.readouterr().out
    assert "Results: EMA 0.9999" in printed and "| Baseline best | 33.07 ± 0.07 (n=2)" in printed


def test_runs_without_any_evaluation_still_give_a_report(tmp_path):
    write_run(tmp_path / "s", "baseline-s0", model="baseline", seed=0, ema_decays=[0.9999],
              evaluated=False)
    report = make_report(study_dir=tmp_path / "s", out=tmp_path / "r", formats=("png",))
    text = report.read_text()
    assert "- run baseline-s0: not evaluated yet" in text and "No FID rows yet" in text
    assert (tmp_path / "r" / "training_loss.png").stat().st_size > 0


def test_no_runs_is_a_clear_error_naming_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoRunsFoundError, match=f"found in: {tmp_path / 'empty'}"):
        make_report(study_dir=tmp_path / "empty")
    with pytest.raises(FormatError, match="jpgg"):
        make_report(study_dir=tmp_path / "empty", formats=("png", "jpgg"))


def test_figures_written_at_paper_size(report, study):
    out = report.parent
    for stem in ("fid_vs_epoch", "training_loss", "ema_diagnostics"):
        png, pdf = out / f"{stem}.png", out / f"{stem}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000

    loaded = load_study(study_dir=study)
    summary = summarize(dedupe_networks(loaded.fid))
    figures = [fid_figure(summary, "t"), training_figure(loaded.metrics),
               ema_figure(ema_diagnostics(loaded.metrics))]
    # Two decays -> two panels, two-column width; loss: one panel per model (their losses are
    # not comparable); EMA diagnostics: a row of two panels per model.
    assert [len([a for a in f.axes if a.get_visible()]) for f in figures] == [2, 2, 4]
    assert [f.get_figwidth() for f in figures] == [7.0, 7.0, 7.0]
    for figure in figures:
        sizes = [t.get_fontsize() for t in figure.findobj(Text) if t.get_text()]
        assert sizes and min(sizes) >= 8


def test_latex_without_jinja2(monkeypatch):
    table = pd.DataFrame({"With EMA": ["27.90 ± 0.10 @ 400ep †"], "x_y": ["50%"]},
                         index=pd.Index(["Baseline best"], name="Model"))
    expected_row = r"Baseline best & 27.90 $\pm$ 0.10 @ 400ep $^\dagger$ & 50\% \\"
    assert expected_row in to_latex(table)
    assert r"x\_y" in latex_by_hand(table)
    monkeypatch.setitem(sys.modules, "jinja2", None)  # "import jinja2" now raises ImportError
    assert expected_row in to_latex(table)


def test_cli_writes_the_report_and_leaves_no_litter(tmp_path):
    runs = write_study(tmp_path / "study", seeds=(0,), decays=(0.9999,))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "analysis.report", f"runs=[{runs[0]},{runs[1]}]",
               "formats=[png]"]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # No .hydra/, no log file, no timestamped folder: only the default report folder.
    assert [p.relative_to(cwd).as_posix() for p in cwd.iterdir()] == ["outputs"]
    report = cwd / "outputs" / "report" / "report.md"
    assert f"report: {Path('outputs/report/report.md')}" in done.stdout
    # one training and one sampling seed, no bootstrap replicates: no interval
    assert "| Baseline best | 33.07 @ 200ep | 27.90 @ 400ep | -5.17 |" in report.read_text()
    assert "| LIFT DP-Total best | 36.65 @ 2000ep | 28.91 @ 400ep | -7.74 |" in done.stdout

    command = [sys.executable, "-m", "analysis.report", f"study_dir={tmp_path / 'nothing'}"]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    said = done.stdout + done.stderr
    assert f"no run folders (holding run.json) found in: {tmp_path / 'nothing'}" in said
    assert "Traceback" not in done.stderr
