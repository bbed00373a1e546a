"""``m2s2l calibrate``: a checkpoint's alert calibration recomputed on named normal clips, optionally after a change
of the score formula; the weights are untouched and bad requests fail with one clear message."""
import numpy as np
import pytest
import torch

from m2s2l.cli import main
from m2s2l.data.frames import find_clips, read_clip
from m2s2l.data.synthetic import make_dataset
from m2s2l.engine.checkpoint import load_checkpoint, make_checkpoint, read_checkpoint, save_checkpoint
from m2s2l.models import create_model

SIZE = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    make_dataset(str(root / "data"), size=SIZE, n_train=3, n_test=1, n_frames=10, seed=3)
    torch.manual_seed(0)
    model = create_model("m2s2l_lite", image_size=SIZE, backend="torch").eval()
    old_calib = {"method": "zscore", "mean": 0.0, "std": 1.0, "quantile": 0.99, "threshold": 2.0}
    ck = make_checkpoint("m2s2l_lite", model, calibration=old_calib, extra={"val_clips": ["02"]})
    save_checkpoint(ck, str(root / "model.pt"))
    return root


def expected_scores(model, root, name):
    """model.score on every frame of training clip ``name`` with a full history, computed here from the frames."""
    clip = [c for c in find_clips(str(root / "data"), "training") if c.name == name][0]
    x = torch.from_numpy(read_clip(clip, SIZE, model.config.in_channels)).float() / 127.5 - 1
    T = model.config.clip_len
    idx = torch.arange(T, len(x))
    with torch.no_grad():
        return model.score({"clip": x[idx[:, None] + torch.arange(-T, 0)], "target": x[idx]})["score"].double()


def run(root, out, *extra):
    return main(["calibrate", "--ckpt", str(root / "model.pt"), "--data", str(root / "data"), "--out", str(out),
                 "--device", "cpu", "--backend", "torch", *extra])


def test_new_score_and_calibration(setup, capsys):
    root = setup
    out = root / "motion.pt"
    assert run(root, out, "--set", "score_w_appearance=0", "--set", "score_w_motion=1.0") == 0
    model, ck = load_checkpoint(str(out))
    before = read_checkpoint(str(root / "model.pt"))
    assert model.config.score_w_appearance == 0 and model.config.score_w_motion == 1.0
    assert {k: v for k, v in ck["config"].items() if not k.startswith("score_w")} == \
        {k: v for k, v in before["config"].items() if not k.startswith("score_w")}
    for k, v in before["state_dict"].items():
        assert torch.equal(ck["state_dict"][k], v), k
    s = expected_scores(model, root, "02").numpy()  # the checkpoint's validation clip, the default
    c = ck["calibration"]
    assert c["clips"] == ["02"] and c["source"] == "val" and c["n_frames"] == len(s)
    assert c["quantile"] == 0.99  # kept from the previous calibration
    np.testing.assert_allclose([c["mean"], c["std"], c["threshold"]],
                               [s.mean(), s.std(), np.quantile(s, 0.99)], rtol=1e-5, atol=1e-5)
    rec = ck["extra"]["recalibrated"][-1]
    assert rec["config_before"] == {"score_w_appearance": 0.5, "score_w_motion": 0.5}
    assert rec["calibration_before"]["threshold"] == 2.0 and ck["extra"]["val_clips"] == ["02"]
    # the motion-only score differs from the default one on the same frames (the change did something)
    default_model, _ = load_checkpoint(str(root / "model.pt"))
    assert not np.allclose(expected_scores(default_model, root, "02").numpy(), s)
    assert "threshold" in capsys.readouterr().out


def test_named_clips_quantile_and_in_place(setup, tmp_path):
    root = setup
    out = tmp_path / "copy.pt"
    out.write_bytes((root / "model.pt").read_bytes())
    assert main(["calibrate", "--ckpt", str(out), "--data", str(root / "data"), "--out", str(out), "--device", "cpu",
                 "--backend", "torch", "--clips", "01,03", "--quantile", "0.5"]) == 0
    model, ck = load_checkpoint(str(out))
    s = np.concatenate([expected_scores(model, root, n).numpy() for n in ("01", "03")])
    c = ck["calibration"]
    assert c["clips"] == ["01", "03"] and c["source"] == "clips" and c["n_frames"] == len(s)
    np.testing.assert_allclose(c["threshold"], np.quantile(s, 0.5), rtol=1e-5, atol=1e-5)
    assert ck["extra"]["recalibrated"][-1]["config_set"] == {}


@pytest.mark.parametrize("args, match", [
    (("--set", "clip_len=8"), "score_w_appearance"),  # architecture keys would need retraining
    (("--set", "score_nonsense=1"), "only the score's settings"),
    (("--set", "score_patch=1"), "score_patch"),       # the config's own validation
    (("--clips", "01,99"), "99"),
    (("--quantile", "1.5"), "quantile"),
])
def test_bad_requests(setup, capsys, args, match):
    root = setup
    out = root / "bad.pt"
    assert run(root, out, *args) == 2
    err = capsys.readouterr().err
    assert "m2s2l calibrate: error:" in err and match in err
    assert not out.exists()
