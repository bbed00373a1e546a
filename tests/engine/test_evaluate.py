"""The evaluation protocol on a tiny hand-computed example, the outputs it writes, and calibration."""
import csv
import json

import numpy as np
import pytest

from m2s2l.engine.calibrate import calibrate, normalise
from m2s2l.engine.evaluate import minmax, protocol_metrics, write_outputs

# clip_len T = 1: the first frame of every clip has no history and is excluded.
RAW = {"A": np.array([9.0, 1, 3, 2, 5]), "B": np.array([0.0, 10, 30, 20]), "C": np.array([7.0, 4, 4, 6])}
LAB = {"A": np.array([1, 0, 1, 0, 1]), "B": np.array([0, 1, 0, 0]), "C": np.array([0, 0, 0, 0])}


def test_protocol_by_hand():
    m, norm = protocol_metrics(RAW, LAB, clip_len=1)
    # per-video min-max of the kept frames
    np.testing.assert_allclose(norm["A"], [0, 0.5, 0.25, 1])
    np.testing.assert_allclose(norm["B"], [0, 1, 0.5])
    np.testing.assert_allclose(norm["C"], [0, 0, 1])
    # per clip: A separates perfectly, B is inverted, C has one class only (not in macro)
    assert m["per_clip"]["A"]["auc"] == 1.0 and m["per_clip"]["B"]["auc"] == 0.0
    assert m["per_clip"]["C"]["auc"] is None
    assert m["macro_auc"] == pytest.approx(0.5) and m["n_clips_in_macro"] == 2
    # micro: 3 positives {.5, 1, 0} vs 7 negatives {0, .25, 1, .5, 0, 0, 1}: wins + ties/2 = 4.5 + 6 + 1.5 = 12
    assert m["micro_auc"] == pytest.approx(12 / 21)
    assert m["n_frames"] == 10 and m["n_excluded"] == 3 and m["smoothing"] is None


def test_first_frames_are_excluded_not_scored():
    raw = {"A": np.array([np.nan, np.nan, 1.0, 2.0, 3.0])}
    m, norm = protocol_metrics(raw, {"A": np.array([1, 1, 0, 0, 1])}, clip_len=2)
    assert m["micro_auc"] == 1.0 and m["n_frames"] == 3  # the two labelled-1 history frames do not count
    with pytest.raises(ValueError, match="non-finite"):
        protocol_metrics(raw, None, clip_len=1)


def test_smoothing_spreads_a_spike_then_normalises():
    raw = {"A": np.array([0.0, 0, 0, 0, 10, 0, 0, 0, 0])}
    lab = {"A": np.array([0, 0, 0, 1, 1, 1, 0, 0, 0])}
    m0, n0 = protocol_metrics(raw, lab, clip_len=0)
    m1, n1 = protocol_metrics(raw, lab, clip_len=0, smooth_sigma=1.0)
    assert n0["A"][3] == 0 and 0 < n1["A"][3] < 1 and n1["A"].max() == 1.0 and n1["A"].min() == 0.0
    assert m1["micro_auc"] > m0["micro_auc"]
    assert m1["smoothing"] == {"type": "gaussian", "sigma": 1.0}


def test_write_outputs(tmp_path):
    m, norm = protocol_metrics(RAW, LAB, clip_len=1)
    write_outputs(str(tmp_path), RAW, norm, LAB, m, clip_len=1)
    rows = list(csv.DictReader(open(tmp_path / "scores.csv")))
    assert list(rows[0]) == ["clip", "frame", "score", "label", "raw_score"] and len(rows) == 10
    assert rows[0] == {"clip": "A", "frame": "1", "score": "0.000000", "label": "0", "raw_score": "1"}
    assert json.load(open(tmp_path / "metrics.json"))["micro_auc"] == pytest.approx(12 / 21)
    assert (tmp_path / "score_curves.png").stat().st_size > 1000


def test_minmax_constant_and_calibration():
    assert minmax([3.0, 3.0]).tolist() == [0.0, 0.0]
    scores = np.arange(1000, dtype=float)
    c = calibrate(scores, quantile=0.99, source="val", clips=["04"])
    assert c["mean"] == pytest.approx(499.5) and c["threshold"] == pytest.approx(989.01)
    assert c["false_alarm_rate"] == pytest.approx(0.01) and c["n_frames"] == 1000
    assert normalise([c["mean"]], c)[0] == 0
    with pytest.raises(ValueError, match="quantile"):
        calibrate(scores, quantile=1.5)
