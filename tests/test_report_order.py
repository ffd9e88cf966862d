"""The answer first (issue 22): report.md and report.html open with the verdict, the results
table and the FID figure, and end with the protocol, runs, missing pieces and warnings; one
table for the EMA-length question; report.html within its size budget; figure titles on one
line; and, where Chromium is installed, the results table on the first screen of the page.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image, ImageDraw
from synthetic_runs import known_fid, write_length_study, write_study

from analysis.figures import (
    best_length_figure,
    ema_figure,
    fid_figure,
    fid_length_figure,
    heldout_figure,
    memorization_figure,
    prc_figure,
    training_figure,
)
from analysis.load import dedupe_networks, ema_diagnostics, load_study
from analysis.page.html import markdown_to_html
from analysis.report import make_report
from analysis.stats import summarize
from analysis.stats.lengths import best_lengths, length_summary, mark_tracked
from analysis.stats.overfitting import heldout_frame, memorization_summary
from analysis.tables import BEST_MARK, GAIN_COLUMN, LENGTH_COLUMNS

EPOCHS = (200, 400, 600, 800)
SIGMAS = (0.02, 0.04, 0.07, 0.12, 0.25)
MB = 1_000_000
FIRST_SCREEN = (1280, 800)  # px: the screenshots' and the browser test's window


def _grid(path: Path, seed: int, tiles: int = 8, tile: int = 32) -> Path:
    """A sample grid as evaluation writes one: tiles x tiles images of coloured blobs, each
    `tile` px, 2 px apart (266 px for 8 x 32 px), drawn at 4x: 1064 px, as a large grid."""
    rng = np.random.default_rng(seed)
    size = 4 * (tiles * (tile + 2) + 2)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for i in range(tiles):
        for j in range(tiles):
            x, y = 4 * (2 + i * (tile + 2)), 4 * (2 + j * (tile + 2))
            draw.rectangle([x, y, x + 4 * tile, y + 4 * tile],
                           fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
            for _ in range(3):
                a, b = rng.integers(0, 4 * tile, 2)
                r = int(rng.integers(8, 40))
                draw.ellipse([x + a - r, y + b - r, x + a + r, y + b + r],
                             fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    noise = rng.integers(-12, 12, (size, size, 3))  # samples are never flat colour
    pixels = np.clip(np.asarray(image, dtype=int) + noise, 0, 255).astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _add_grids(run: Path, epochs=EPOCHS) -> None:
    path = "ddim" if "baseline" in run.name else "dp_total"
    for k, epoch in enumerate(epochs):
        for weights in ("raw", "ema"):
            _grid(run / "eval" / "grids" / f"epoch_{epoch:04d}_{weights}_{path}_s42.png",
                  seed=k)
    if "lift" in run.name:
        _grid(run / "eval" / "heatmaps" / f"epoch_{epochs[-1]:04d}_raw_study_g10_k2_n4_s42.png",
              seed=99, tiles=10)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    """Baseline and LIFT, one seed, EMA 0.999 mostly initial weights at first (a warning),
    sample grids and a heatmap as large as real ones: the smoke study's shape."""
    root = tmp_path_factory.mktemp("order") / "study"
    runs = write_study(root, seeds=(0,), decays=(0.999,), epochs=EPOCHS, metrics=True,
                       steps_per_epoch=1)
    for run in runs:
        _add_grids(run)
    return root


@pytest.fixture(scope="module")
def report(two_runs, tmp_path_factory) -> Path:
    return make_report(study_dir=two_runs, out=tmp_path_factory.mktemp("order-out"),
                       formats=("png", "html"))


def _tables(text: str) -> list[list[str]]:
    """The Markdown tables of a text, each as its lines."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_report_md_opens_with_the_verdict_table_and_figure(report):
    text = report.read_text()
    first = _tables(text)[0]
    header = [c.strip() for c in first[0].strip("|").split("|")]
    assert header == ["Model", "Without EMA", "With EMA", GAIN_COLUMN]
    assert first[2].startswith("| Baseline best |")
    # the verdict: a sentence per model, between the title and that table
    head = text[:text.index(first[0])]
    assert head.startswith("# ") and head.count("\n- **") == 2
    assert "- **Baseline**: FID of EMA 0.999 minus raw" in head
    assert "- **LIFT DP-Total**: FID of EMA 0.999 minus raw" in head
    # one seed, no bootstrap: no interval, and the sentence says why once, not twice
    assert head.count("(no intervals: one seed and no bootstrap replicates).") == 2
    assert head.count("no interval") == 2
    # the footnote of a number that reads differently stays beside it, before the figure
    after = text[text.index(first[-1]):]
    assert after.index("† EMA still mostly initial weights") < after.index("![")
    # order of the sections: answer, evidence, then what it was made with and what is lacking
    order = ["## Results", "### Results: EMA 0.999", "![FID vs epoch", "### FID by epoch",
             "![Precision and recall", "## Training", "## Samples", "## Protocol",
             "### FID protocol:", "## Runs", "## Missing", "## Warnings"]
    places = [text.index(marker) for marker in order]
    assert places == sorted(places), dict(zip(order, places, strict=True))
    assert text.index("![") < text.index("## Protocol") < text.index("| Dataset |")
    # the warning is listed at the end as well
    assert "EMA still mostly initial weights at" in text.split("## Warnings")[1]


def test_report_html_opens_with_the_results_table_and_figure(report):
    page = (report.parent / "report.html").read_text()
    table = page.index(f"<th>{GAIN_COLUMN}</th>")
    assert page.index("<table") < table  # no table before the results table
    image = page.index("<img")
    protocol = page.index("<h2>Protocol</h2>")
    assert table < image < protocol < page.index("<h2>Runs</h2>") < page.index("<h2>Warnings")
    assert page.index("<li><strong>Baseline</strong>: FID of EMA 0.999") < table


def test_report_html_is_small_and_says_what_it_shrank(report, tmp_path):
    out = report.parent
    page = (out / "report.html").read_text()
    assert (out / "report.html").stat().st_size <= 1 * MB
    images = re.findall(r'<a href="([^"]+)"><img [^>]*src="data:image/', page)
    # every figure and grid of report.md is embedded, each linking its full-size file
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    assert images == shown and len(re.findall("<img ", page)) == len(shown) >= 10
    assert any("eval/grids" in src for src in images)
    assert all((out / src).is_file() for src in images)
    assert "fid_vs_epoch.png" in images
    assert f"Embedded: {len(images)} of {len(images)} images" in page
    # the full-size files are much larger than what the page holds
    full = sum((out / src).stat().st_size for src in images)
    assert full > 2 * (out / "report.html").stat().st_size


def test_one_run_report_html_is_small(two_runs, tmp_path):
    run = next(two_runs.glob("baseline-*"))
    report = make_report(runs=[run], out=tmp_path / "one", formats=("png", "html"))
    assert report.read_text().count("### Results: EMA 0.999") == 1
    assert (tmp_path / "one" / "report.html").stat().st_size <= 1 * MB


def test_html_budget_leaves_images_out_and_says_where(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3)).astype("uint8")
    for i in range(6):  # incompressible: ~100 kB each, even scaled down
        Image.fromarray(noise[:, ::-1] if i % 2 else noise).save(tmp_path / f"f{i}.png")
    lines = ["# Title", "", "Some text.", ""]
    lines += [f"![figure {i}](f{i}.png)" for i in range(4)]
    lines += ["", "| epoch | raw |", "|:---|:---:|",
              "| 1 | ![grid 4](f4.png) |", "| 2 | ![grid 5](f5.png) |"]
    whole = markdown_to_html(lines, tmp_path, "t", budget=10 * MB)
    assert len(re.findall('src="data:', whole)) == 6 and "not embedded" not in whole
    budget = len(whole.encode()) // 2
    page = markdown_to_html(lines, tmp_path, "t", budget=budget)
    assert len(page.encode()) <= budget
    kept = re.findall(r'<img alt="([^"]+)"', page)
    left = re.findall(r'\[not embedded: ([^\]]+)\]', page)
    assert kept and left and len(kept) + len(left) == 6
    assert kept[0] == "figure 0"  # page order: the first figures are kept
    # the page says what was left out, under the title and at the end, with each file
    notice = page[page.index("</h1>"):page.index("Some text")]
    assert f"{len(left)} of 6 images are not embedded" in notice
    footer = page[page.index("<footer>"):]
    assert "Left out" in footer and all(f'href="f{alt[-1]}.png"' in footer for alt in left)


def _length_fid(model: str):
    """raw = known_fid; every post-hoc length: raw - 4 + 10 (log(σ / 0.07))^2 (best 0.07);
    the fixed decay: raw - 1."""
    def fid(path, weights_id, epoch):
        raw = known_fid(model, path, "raw", epoch)
        if weights_id == "raw":
            return raw
        if weights_id.startswith("phema@"):
            return raw - 4 + 10 * math.log(float(weights_id.split("@")[1]) / 0.07) ** 2
        return raw - 1.0
    return fid


@pytest.fixture(scope="module")
def length_study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("length") / "study"
    return write_length_study(root, _length_fid, SIGMAS, EPOCHS)


def test_ema_lengths_are_one_table(length_study, tmp_path):
    report = make_report(study_dir=length_study, out=tmp_path / "r", formats=("png",))
    text, out = report.read_text(), report.parent
    assert text.count("### Results") == 1 and not list(out.glob("results_phema*"))
    tables = _tables(text)
    assert f"| {GAIN_COLUMN} |" in tables[0][0]  # still the results table first
    one = pd.read_csv(out / "results_by_length.csv", index_col=0, dtype=str,
                      keep_default_na=False)
    assert list(one.columns) == LENGTH_COLUMNS
    baseline = one.loc["Baseline"]
    # raw, the fixed decay and every length, ordered by σrel at the final epoch
    assert baseline["Weights"].iloc[0] == "raw"
    names = list(baseline["Weights"])
    assert "EMA 0.999" in names and len(names) == 2 + len(SIGMAS)
    sigmas = [float(s) for s in baseline["σrel"] if s]
    assert sigmas == sorted(sigmas)
    best = baseline[baseline["Weights"].str.endswith(BEST_MARK)]
    assert list(best["Weights"]) == [f"post-hoc EMA σrel 0.07 (tracked) {BEST_MARK}"]
    raw_best = known_fid("baseline", "ddim", "raw", 200)
    assert best["Best FID"].item() == f"{raw_best - 4:.2f} @ 200ep"
    assert best[f"{GAIN_COLUMN} at best"].item() == "-4.00"
    # the verdict names the best length
    head = text[:text.index("### Results")]
    assert "- **Baseline**: of 6 averaged weight sets, post-hoc EMA σrel 0.07 has the lowest" \
        in head
    # the FID-vs-epoch figure shows the fixed decay and the best length, not the sweep
    assert "panels: the fixed decay and the lowest-FID length" in text


def _title_overflows(fig) -> list[str]:
    """Titles on more than one line, or wider than the figure (suptitle) or their axes."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    bad = []
    texts = [(fig._suptitle, fig.bbox.width)] if fig._suptitle else []
    texts += [(ax.title, ax.bbox.width) for ax in fig.axes if ax.get_visible()]
    for text, room in texts:
        if not text.get_text():
            continue
        width = text.get_window_extent(renderer).width
        if "\n" in text.get_text() or width > room:
            bad.append(f"{text.get_text()!r}: {width:.0f} > {room:.0f} px")
    return bad


def test_figure_titles_fit_on_one_line(two_runs, length_study):
    figures = []
    for study_dir in (two_runs, length_study):
        study = load_study(study_dir)
        summary = summarize(dedupe_networks(study.fid))
        figures += [fid_figure(summary, "FID vs epoch"),
                    prc_figure(summary, "Precision and recall vs epoch"),
                    training_figure(study.metrics),
                    ema_figure(ema_diagnostics(study.metrics)),
                    heldout_figure(heldout_frame(study.metrics)),
                    memorization_figure(memorization_summary(study.fid),
                                        "Memorisation vs epoch")]
    # the last study has EMA lengths
    lengths = mark_tracked(length_summary(summary, study.fid), study.runs)
    figures += [fid_length_figure(lengths, "FID vs EMA length"),
                best_length_figure(best_lengths(lengths))]
    figures = [f for f in figures if f is not None]
    assert len(figures) >= 10
    assert [bad for f in figures for bad in _title_overflows(f)] == []


def _chromium() -> str | None:
    return next((p for name in ("chromium", "chromium-browser", "google-chrome")
                 if (p := shutil.which(name))), None)


# Measures the page once every image has loaded; the numbers come back as the page's title.
PROBE = """<script>
addEventListener("load", () => {
  const table = [...document.querySelectorAll("table")]
    .find(t => t.tHead && t.tHead.textContent.includes("EMA - raw"));
  const box = e => e ? e.getBoundingClientRect().toJSON() : null;
  document.title = JSON.stringify({table: box(table), img: box(document.querySelector("img")),
                                   width: innerWidth});
});
</script>"""


@pytest.mark.skipif(_chromium() is None, reason="no chromium installed")
def test_results_table_is_on_the_first_screen_in_a_browser(report, tmp_path):
    page = (report.parent / "report.html").read_text()
    probe = report.parent / "probe.html"  # beside the page: the same relative links
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    try:
        done = subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             f"--window-size={FIRST_SCREEN[0]},{FIRST_SCREEN[1]}", "--virtual-time-budget=10000",
             "--dump-dom", probe.as_uri()],
            capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    title = re.search(r"<title>(.*?)</title>", done.stdout, re.S)
    assert title, done.stderr[-2000:]
    boxes = json.loads(html.unescape(title[1]))
    # Layout depends on the width only (no height-relative CSS), so the first screen is the
    # top FIRST_SCREEN[1] px: headless Chromium's innerHeight here is not the window's.
    assert boxes["width"] == FIRST_SCREEN[0]
    assert boxes["table"] is not None and boxes["table"]["bottom"] <= FIRST_SCREEN[1]
    assert boxes["img"]["top"] < FIRST_SCREEN[1]  # the figure starts on the first screen
