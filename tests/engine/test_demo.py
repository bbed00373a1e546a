"""The embedded demo end to end with the real m2s2l_lite (CI size): synthetic data -> train -> eval."""
import json
import os

import pytest
import torch

from m2s2l.cli import main
from m2s2l.models import list_models


@pytest.mark.skipif("m2s2l_lite" not in list_models(), reason="m2s2l_lite is not registered")
def test_quick_demo_detects_anomalies(tmp_path, capsys):
    torch.manual_seed(0)
    out = str(tmp_path / "demo")
    assert main(["demo", "--out", out, "--quick"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    m = json.load(open(os.path.join(out, "eval", "metrics.json")))
    assert last == f"demo: micro AUC {m['micro_auc']:.3f}, macro AUC {m['macro_auc']:.3f}"
    assert m["micro_auc"] >= 0.8, m
    for f in ("eval/scores.csv", "eval/score_curves.png", "run/model.pt", "data/labels.csv"):
        assert os.path.isfile(os.path.join(out, f)), f
    assert m["n_clips"] == 3 and m["calibration"]["n_frames"] > 0
