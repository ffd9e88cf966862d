"""Tests of the report's HTML page, its fixes (issue 16.3-16.4) and its EMA-length, held-out
loss and memorisation parts (issue 15.3-15.5), on small synthetic studies (tests/synthetic_runs.py).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from synthetic_runs import known_fid, write_length_study, write_run, write_study

from analysis.figures import (
    ema_figure,
    fid_figure,
    fid_length_figure,
    fid_log_scale,
    star_shifts,
    training_figure,
)
from analysis.load import dataset_label, dedupe_networks, ema_diagnostics, load_study
from analysis.report import make_report
from analysis.stats import summarize
from analysis.stats.lengths import length_summary, mark_tracked
from analysis.tables import length_table

EPOCHS = (200, 400, 600, 800)
SIGMAS = (0.02, 0.04, 0.07, 0.12, 0.25)
# the lowest-FID length per epoch of `_length_fid`: shorter early, longer later
BEST_SIGMA = {200: 0.04, 400: 0.07, 600: 0.12, 800: 0.12}


def _png(path: Path) -> Path:
    """A tiny real PNG (matplotlib writes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(0.5, 0.5))
    fig.add_subplot().imshow(np.random.default_rng(0).random((4, 4, 3)))
    fig.savefig(path)
    return path


@pytest.fixture(scope="module")
def small_study(tmp_path_factory) -> Path:
    """Baseline and LIFT, seeds 0 and 1, EMA 0.9999, 4 epochs, with grids and a heatmap."""
    root = tmp_path_factory.mktemp("html") / "study"
    runs = write_study(root, seeds=(0, 1), decays=(0.9999,), epochs=EPOCHS)
    for run in runs:
        for weights in ("raw", "ema"):
            for epoch in EPOCHS:
                path = "ddim" if "baseline" in run.name else "dp_total"
                _png(run / "eval" / "grids" / f"epoch_{epoch:04d}_{weights}_{path}_s42.png")
        if "lift" in run.name:
            _png(run / "eval" / "heatmaps" / "epoch_0800_raw_study_g10_k2_n4_s42.png")
    return root


@pytest.fixture(scope="module")
def html_report(small_study, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html-out")
    return make_report(study_dir=small_study, out=out, formats=("md", "html"))


def test_html_is_one_self_contained_file(html_report):
    page = (html_report.parent / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert "<link" not in page and "<script" not in page  # no external CSS or JS
    # the results table with its interval, the protocol header, the figures, the grids
    assert "Baseline best" in page and "[-5.17, -5.17]" in page
    assert "Feature extractor" in page
    assert 'alt="FID vs epoch' in page and 'alt="EMA diagnostics' in page
    assert not re.search(r'src="[^"]*eval/(grids|heatmaps)', page)  # embedded
    # each linking its full-size file (issue 22), and only from an embedded copy
    linked = re.findall(r'href="([^"]*eval/(?:grids|heatmaps)/[^"]*)"', page)
    wrapped = re.findall(r'<a href="([^"]*eval/(?:grids|heatmaps)/[^"]*)"><img [^>]*'
                         r'src="data:image/', page)
    assert linked and linked == wrapped
    assert len(re.findall(r'alt="baseline-ema0.9999-s0 epoch \d+ raw ddim"', page)) >= 1
    assert 'alt="lift-ema0.9999-s0 epoch 800 raw"' in page  # the heatmap


def test_html_needs_png_and_md_is_accepted(html_report):
    out = html_report.parent
    # formats=[md, html]: no figure format asked, png made for embedding
    assert (out / "fid_vs_epoch.png").is_file() and not list(out.glob("*.pdf"))
    assert html_report.name == "report.md" and html_report.is_file()


def test_report_md_links_the_grids_and_heatmaps(html_report):
    text = html_report.read_text()
    assert "## Samples" in text
    links = re.findall(r"\]\(([^)]*eval/(?:grids|heatmaps)/[^)]*)\)", text)
    assert links and all((html_report.parent / link).is_file() for link in links)
    # best raw epoch of Baseline is 200, final 800: both shown
    assert "| 200 (best raw) |" in text and "(best EMA" in text and "final) |" in text


def test_warnings_are_not_missing_and_the_dagger_is_explained(tmp_path):
    # 10 steps per epoch: EMA 0.9999 mostly initial weights at the early epochs
    write_run(tmp_path / "s", "baseline-s0", model="baseline", seed=0, ema_decays=[0.9999],
              epochs=EPOCHS, steps_per_epoch=10)
    text = make_report(study_dir=tmp_path / "s", formats=("png",)).read_text()
    missing = text.split("## Missing")[1].split("\n## ")[0]
    warnings = text.split("## Warnings")[1].split("\n## ")[0]
    assert "Nothing missing." in missing and "initial weights" not in missing
    assert "- Baseline EMA 0.9999: EMA still mostly initial weights" in warnings
    by_epoch = text.split("### FID by epoch")[1].split("\n### ")[0]
    assert "†" in by_epoch and "† EMA still mostly its initial weights" in by_epoch


def test_fid_scale_auto_log_linear():
    wide = pd.DataFrame({"mean": [2.0, 20.0]})
    narrow = pd.DataFrame({"mean": [10.0, 40.0]})
    assert fid_log_scale(wide) and not fid_log_scale(narrow)
    assert fid_log_scale(narrow, "log") and not fid_log_scale(wide, "linear")
    with pytest.raises(ValueError, match="fid_scale"):
        fid_log_scale(wide, "logarithmic")


def test_fid_figure_follows_fid_scale(small_study):
    summary = summarize(dedupe_networks(load_study(small_study).fid))
    assert fid_figure(summary, "t", "log").axes[0].get_yscale() == "log"
    assert fid_figure(summary, "t", "linear").axes[0].get_yscale() == "linear"


def test_best_stars_on_one_epoch_are_spread():
    shifts = star_shifts([400, 400, 400, 200], [200, 400, 600])
    assert len({shifts[0], shifts[1], shifts[2]}) == 3 and shifts[3] == 0.0
    assert all(abs(s) < 200 / 2 for s in shifts)  # never as far as the next epoch


def _titles(fig: Figure) -> str:
    return " ".join([fig.get_suptitle()] + [ax.get_title() for ax in fig.axes])


def test_training_figure_panels_and_seed_words(tmp_path):
    write_run(tmp_path / "one", "b", model="baseline", seed=0, epochs=EPOCHS)
    write_run(tmp_path / "one", "l", model="lift", seed=0, epochs=EPOCHS)
    fig = training_figure(load_study(tmp_path / "one").metrics)
    assert "seeds" not in _titles(fig) and "not comparable" in _titles(fig)
    assert len(fig.axes) == 2 and "loss_64 + loss_32" in _titles(fig)
    write_run(tmp_path / "one", "b1", model="baseline", seed=1, epochs=EPOCHS)
    assert "over 2 seeds" in _titles(training_figure(load_study(tmp_path / "one").metrics))


def test_ema_figure_per_model_in_epochs_without_heldout_losses(tmp_path):
    for model in ("baseline", "lift"):
        write_run(tmp_path / "s", model, model=model, seed=0, ema_decays=[0.999],
                  epochs=EPOCHS, heldout=True)
    diagnostics = ema_diagnostics(load_study(tmp_path / "s").metrics)
    assert not any("loss" in q for q in diagnostics["quantity"].unique())
    fig = ema_figure(diagnostics)
    assert len(fig.axes) == 4  # one row per model: no share curve hides the other
    assert {ax.get_xlabel() for ax in fig.axes[-2:]} == {"epoch"}  # shared x: bottom row
    assert "relative RMS distance EMA−raw" in {ax.get_ylabel() for ax in fig.axes}


def test_dataset_label_says_the_size_once():
    assert dataset_label("shapes-s0-n512-16px", 16) == "shapes-s0-n512-16px"
    assert dataset_label("afhqv2", 64) == "afhqv2 64px"


def _length_fid(model: str):
    """raw = known_fid; every EMA length: raw - 4 + 10 (log(σ / best(epoch)))^2."""
    def fid(path, weights_id, epoch):
        raw = known_fid(model, path, "raw", epoch)
        if weights_id == "raw":
            return raw
        if weights_id.startswith("phema@"):
            sigma = float(weights_id.split("@")[1])
            return raw - 4 + 10 * math.log(sigma / BEST_SIGMA[epoch]) ** 2
        return raw + 1.0  # the fixed decay: worse than the best length
    return fid


@pytest.fixture(scope="module")
def length_study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("length") / "study"
    return write_length_study(root, _length_fid, SIGMAS, EPOCHS)


def _lengths(study_dir: Path) -> pd.DataFrame:
    study = load_study(study_dir)
    summary = summarize(dedupe_networks(study.fid))
    return mark_tracked(length_summary(summary, study.fid), study.runs)


def test_length_table_picks_the_lowest_fid_length(length_study):
    table = length_table(_lengths(length_study))
    for series in ("Baseline", "LIFT DP-Total"):
        rows = table.loc[series]
        got = {int(e): float(s) for e, s in zip(rows["epoch"], rows["best σrel"])}
        assert got == BEST_SIGMA
    first = table.loc["Baseline"].iloc[0]
    raw = known_fid("baseline", "ddim", "raw", 200)
    assert first["raw FID"] == f"{raw:.2f}" and first["FID at best"] == f"{raw - 4:.2f}"
    assert first["EMA 0.999 FID"].startswith(f"{raw + 1:.2f} (σrel ")


def test_fid_length_figure_draws_raw_at_the_left_edge(length_study):
    lengths = _lengths(length_study)
    fig = fid_length_figure(lengths, "t")
    ax = fig.axes[0]
    raw_x = [x for line in ax.get_lines() if line.get_marker() == "X" for x in line.get_xdata()]
    # left of every length drawn (the fixed decay's σrel shrinks below SIGMAS late on)
    assert raw_x and max(raw_x) < lengths["sigma_rel"].min()
    assert ax.get_xscale() == "log"
    assert [a.get_title() for a in fig.axes if a.get_visible()][:4] == [
        f"epoch {e}" for e in EPOCHS]


def test_length_report_sections_and_figures(length_study, tmp_path):
    report = make_report(study_dir=length_study, out=tmp_path / "r", formats=("png", "html"))
    text, out = report.read_text(), report.parent
    assert "### EMA length" in text
    for name in ("fid_vs_ema_length", "best_ema_length", "heldout_loss",
                 "memorization_vs_epoch", "ema_length"):
        assert list(out.glob(f"{name}.*")), name
    assert "No held-out loss" not in text and "No memorisation" not in text
    page = (out / "report.html").read_text()
    assert 'alt="FID vs EMA length' in page and "best σrel" in page


def test_without_lengths_heldout_or_memorisation_the_report_says_so(small_study, tmp_path):
    text = make_report(study_dir=small_study, out=tmp_path / "r", formats=("png",)).read_text()
    assert "### EMA length" not in text and not list((tmp_path / "r").glob("*ema_length*"))
    assert "No held-out loss" in text and "No memorisation rate measured" in text
