"""Two report sections that read more than one weight set or more than one machine:

- BEMA and the EMA's lag (issue 23): BEMA against the longest EMA and against raw, early
  (epochs 1-3) and at the final epoch, paired per sampling seed; its own marker on the
  EMA-length figure (it has no single length).
- Environments (issue 20): every environment that trained a run or made a row, and a warning
  when one protocol's rows come from more than one.

The runs are synthetic (tests/synthetic_runs.py) with FIDs built so the answers are known.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from synthetic_runs import write_run

from analysis.figures import fid_length_figure
from analysis.load import dedupe_networks, load_study
from analysis.report import make_report
from analysis.sections.verdicts import lag_verdicts
from analysis.stats import summarize
from analysis.stats.lengths import length_summary, mark_tracked
from analysis.tables import NO_LENGTH, lag_table
from explore.run.folder import FID_FILE, RUN_FILE

EPOCHS = (1, 2, 3, 4, 5, 6)
SEEDS = (0, 1, 2)
NOISE = {0: -0.02, 1: 0.0, 2: 0.02}  # per sampling seed, shared by every weight set (paired)


def _raw(epoch: int, seed: int) -> float:
    return 20.0 / epoch + NOISE[seed]


def _fid(path, weights_id, epoch, sample_seed):
    """raw falls as 20/epoch; the EMA 0.995 lags far behind early (+30/epoch^2); a power EMA
    lags less."""
    raw = _raw(epoch, sample_seed)
    if weights_id == "raw":
        return raw
    if weights_id.startswith("ema@"):
        return raw + 30.0 / epoch**2
    return raw + 8.0 / epoch**2  # phema@0.1


def _bema(epoch: int, seed: int) -> float:
    """Close to raw early (no lag), 0.5 worse than raw at the final epoch."""
    return _raw(epoch, seed) + (0.5 if epoch == EPOCHS[-1] else 0.05 * seed)


def _add_bema_rows(run_dir: Path) -> None:
    fid = pd.read_csv(run_dir / FID_FILE)
    ema = fid[fid["weights"] == "ema"].copy()
    ema["weights"] = "bema"
    ema["fid"] = [_bema(e, s) for e, s in zip(ema["epoch"], ema["sample_seed"], strict=True)]
    ema[["ema_share", "ema_share_low", "lag_epochs", "sigma_rel"]] = None
    pd.concat([fid, ema]).to_csv(run_dir / FID_FILE, index=False)


@pytest.fixture(scope="module")
def lag_study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lag_study")
    run = write_run(root, "baseline-lag-seed0", model="baseline", seed=0, ema_decays=(0.995,),
                    phema=(0.1,), epochs=EPOCHS, sample_seeds=SEEDS, fid=_fid,
                    steps_per_epoch=50)
    _add_bema_rows(run)
    return root


def _summary(root: Path) -> pd.DataFrame:
    return summarize(dedupe_networks(load_study(root, None).fid))


def test_lag_table_pairs_bema_with_the_longest_ema_and_raw(lag_study):
    table = lag_table(_summary(lag_study))
    assert list(table.index) == ["Baseline @ 1ep", "Baseline @ 2ep", "Baseline @ 3ep",
                                 "Baseline @ 6ep (final)"]
    rows = table.attrs["rows"]["Baseline"]
    assert table.attrs["ema"]["Baseline"] == "EMA 0.995"
    for row in rows[:3]:  # BEMA - EMA = (bema - raw) - 30/epoch^2: negative, per seed paired
        expected = sum(_bema(row.epoch, s) - _fid("", "ema@0.995", row.epoch, s)
                       for s in SEEDS) / len(SEEDS)
        assert row.vs_ema.estimate == pytest.approx(expected, abs=1e-9)
        assert row.vs_ema.significant and row.vs_ema.hi < 0
    final = rows[-1]
    assert final.vs_raw.estimate == pytest.approx(0.5, abs=1e-9)
    assert final.vs_raw.lo > 0  # BEMA loses against raw at the end, significantly


def test_lag_verdicts_say_where_bema_wins_and_loses(lag_study):
    text = " ".join(lag_verdicts(lag_table(_summary(lag_study))))
    assert "BEMA beats EMA 0.995 at 3 of 3 epochs" in text
    assert "at the final epoch (6) it beats EMA 0.995" in text  # 0.5 vs 30/36 = 0.83 worse
    assert re.search(r"against raw it loses at epochs? [\d, ]*\b6\b", text), text


def test_report_has_the_lag_section_and_bema_on_the_length_figure(lag_study, tmp_path):
    report = make_report(lag_study, out=tmp_path / "report", formats=("png",))
    text = report.read_text()
    assert "### BEMA and the EMA's lag" in text
    assert (tmp_path / "report" / "bema_lag.png").is_file()
    assert (tmp_path / "report" / "bema_lag.csv").is_file()
    # the one EMA-length table lists BEMA with no length
    assert NO_LENGTH in text
    assert text.index("### Results") < text.index("### BEMA and the EMA's lag") \
        < text.index("## Protocol")


def test_length_figure_marks_bema_as_its_own_method(lag_study):
    summary = _summary(lag_study)
    study = load_study(lag_study, None)
    lengths = mark_tracked(length_summary(summary, study.fid), study.runs)
    fig = fid_length_figure(lengths, "FID vs EMA length")
    markers = [line.get_marker() for ax in fig.axes for line in ax.lines]
    assert ">" in markers  # BEMA's triangle at the right edge
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert any(label.startswith("BEMA") for label in labels)


# --- environments -------------------------------------------------------------------------


def _environment(env_id: str, torch: str) -> dict:
    return {"id": env_id, "python": "3.11.7", "torch": torch, "cuda": None, "cudnn": None,
            "device": "cpu", "device_name": "Test CPU", "hostname": "node1",
            "git_commit": "0123456789abcdef", "git_dirty": False,
            "packages": {"torch": torch, "numpy": "2.0.0"}, "command": "python -m explore.train"}


def _environment_study(root: Path, second_torch: str) -> Path:
    """Two runs trained in env-a; the second run's rows evaluated in env-b."""
    envs = {"env-a": _environment("env-a", "2.5.1"), "env-b": _environment("env-b", second_torch)}
    for model, rows_env in (("baseline", "env-a"), ("lift", "env-b")):
        run = write_run(root, f"{model}-seed0", model=model, seed=0, ema_decays=(0.99,))
        info = json.loads((run / RUN_FILE).read_text())
        info["environments"] = [envs["env-a"]]
        (run / RUN_FILE).write_text(json.dumps(info))
        fid = pd.read_csv(run / FID_FILE)
        fid["environment"] = rows_env
        fid.to_csv(run / FID_FILE, index=False)
        (run / "eval" / "environments.json").write_text(json.dumps({rows_env: envs[rows_env]}))
    return root


def test_report_lists_environments_and_warns_when_rows_mix_them(tmp_path):
    root = _environment_study(tmp_path / "study", second_torch="2.6.0")
    text = make_report(root, out=tmp_path / "report", formats=("png",)).read_text()
    section = text[text.index("## Environments"):text.index("## Missing")]
    assert "env-a" in section and "env-b" in section and "2.6.0" in section
    assert "baseline-seed0, lift-seed0" in section  # env-a trained both
    warnings = text[text.index("## Warnings"):]
    assert "made in 2 environments" in warnings and "torch" in warnings
    assert text.index("## Results") < text.index("## Environments")


def test_one_environment_gives_no_mixing_warning(tmp_path):
    root = tmp_path / "study"
    run = write_run(root, "baseline-seed0", model="baseline", seed=0, ema_decays=(0.99,))
    fid = pd.read_csv(run / FID_FILE)
    fid["environment"] = "env-a"
    fid.to_csv(run / FID_FILE, index=False)
    text = make_report(root, out=tmp_path / "report", formats=("png",)).read_text()
    assert "environments (" not in text[text.index("## Warnings"):]
    assert "(not recorded)" not in text
