"""Pseudo-anomaly injection, score variants from one forward pass, bench/select_score.py, ``eval --score``."""
import json
import os
import sys

import numpy as np
import pytest
import torch

from m2s2l.cli import main
from m2s2l.data.synthetic import make_dataset
from m2s2l.engine.checkpoint import make_checkpoint, save_checkpoint
from m2s2l.engine.evaluate import score_variants
from m2s2l.engine.pseudo import PRESETS, inject_pseudo_anomalies
from m2s2l.models import create_model
from m2s2l.models.scoring import SCORE_VARIANTS, neg_psnr, patch_max_db

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
import select_score  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def noise_clip(n=180, shape=(64, 80), seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(64, 80), (48, 40, 3)], ids=["gray", "rgb"])
def test_injection_deterministic_and_labels_exact(shape):
    frames = noise_clip(shape=shape)
    before = frames.copy()
    out, lab, events = inject_pseudo_anomalies(frames, np.random.default_rng(7), start_min=4, return_events=True)
    out2, lab2 = inject_pseudo_anomalies(frames, 7, start_min=4)
    assert np.array_equal(frames, before)                       # input untouched
    assert np.array_equal(out, out2) and np.array_equal(lab, lab2)  # same seed, same result
    out3, _ = inject_pseudo_anomalies(frames, 8, start_min=4)
    assert not np.array_equal(out, out3)
    assert out.dtype == np.uint8 and out.shape == frames.shape and lab.shape == (len(frames),)
    modified = np.array([not np.array_equal(a, b) for a, b in zip(frames, out)])
    assert np.array_equal(modified, lab.astype(bool))           # labels = exactly the modified frames
    assert {e["kind"] for e in events} == {"patch", "skip"} and len(events) == 3
    ends = 0
    for e in events:                                            # non-overlapping, 15..40 frames, after start_min
        assert e["start"] >= max(4, ends) and 15 <= e["length"] <= 40
        ends = e["start"] + e["length"] + 8
        assert lab[e["start"]:e["start"] + e["length"]].all()
    assert lab.sum() == sum(e["length"] for e in events)


def test_skip_event_replays_frames_faster_and_patch_moves():
    frames = noise_clip(n=120)
    out, lab, events = inject_pseudo_anomalies(frames, 3, n_patch=1, n_skip=1, return_events=True)
    for e in events:
        a, L = e["start"], e["length"]
        if e["kind"] == "skip":
            s = e["skip"]
            assert all(np.array_equal(out[a + j], frames[a - 1 + s * (j + 1)]) for j in range(L))
        else:
            assert 2.5 * 1.5 * 64 / 256 <= e["speed_px_per_frame"] <= 5 * 1.5 * 64 / 256
            diff = [np.argwhere(out[a + j] != frames[a + j]).mean(0) for j in (0, L - 1)]
            assert np.linalg.norm(diff[1] - diff[0]) > 0.5 * e["speed_px_per_frame"] * (L - 1)


def test_hard_preset_makes_smaller_slower_intruders_and_2x_skips():
    frames = noise_clip(n=400, shape=(256, 256))
    _, lab, events = inject_pseudo_anomalies(frames, 5, n_patch=4, n_skip=2, return_events=True, **PRESETS["hard"])
    patches = [e for e in events if e["kind"] == "patch"]
    skips = [e for e in events if e["kind"] == "skip"]
    assert patches and skips and lab.sum() == sum(e["length"] for e in events)
    for e in patches:
        assert 10 <= e["size"][0] <= 20 and 5 <= e["size"][1] <= 20
        assert 1.5 * 1.5 <= e["speed_px_per_frame"] <= 3.0 * 1.5
    assert {e["skip"] for e in skips} == {2}
    _, _, std = inject_pseudo_anomalies(frames, 5, n_patch=4, n_skip=2, return_events=True, **PRESETS["standard"])
    assert all(e["size"][0] >= 20 for e in std if e["kind"] == "patch")
    with pytest.raises(ValueError, match="size"):
        inject_pseudo_anomalies(frames, 0, size=(0, 10))


def test_injection_bad_inputs():
    with pytest.raises(TypeError, match="frames"):
        inject_pseudo_anomalies(np.zeros((10, 8, 8), np.float32), 0)
    with pytest.raises(TypeError, match="rng"):
        inject_pseudo_anomalies(noise_clip(n=20), "seed")
    with pytest.raises(ValueError, match="length"):
        inject_pseudo_anomalies(noise_clip(n=20), 0, length=(30, 20))
    out, lab = inject_pseudo_anomalies(noise_clip(n=10), 0)     # too short for any event: unchanged
    assert lab.sum() == 0 and np.array_equal(out, noise_clip(n=10))


def tiny(image_size=32, seed=0):
    torch.manual_seed(seed)
    return create_model("m2s2l_lite", image_size=image_size, backend="torch").eval()


def tiny_batch(model, b=3, seed=1):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    clip = torch.rand(b, c.clip_len, c.in_channels, c.image_size, c.image_size, generator=g) * 2 - 1
    return {"clip": clip, "target": (clip[:, -1] + 0.2 * torch.randn(clip[:, -1].shape, generator=g)).clamp(-1, 1)}


def test_score_variants_match_model_score_and_formulas():
    model = tiny()
    batch = tiny_batch(model)
    v = score_variants(model, batch)
    assert list(v) == list(SCORE_VARIANTS)
    assert torch.equal(v["default"], model.score(batch)["score"])
    for name, s in v.items():
        assert s.shape == (3,) and torch.isfinite(s).all(), name
    pred = model.forward(batch["clip"])
    app = (pred["appearance"] - batch["target"]).pow(2).mean(1, keepdim=True)
    mot = (pred["motion"] - model.motion_target(batch)).pow(2).mean(1, keepdim=True)
    torch.testing.assert_close(v["app_psnr"], neg_psnr(pred["appearance"], batch["target"]))
    torch.testing.assert_close(v["app_patch16"], patch_max_db(app, 16))
    torch.testing.assert_close(v["mot_patch16"], patch_max_db(mot, 16))
    torch.testing.assert_close(v["app_patch32"], patch_max_db(app, 32))  # 32 px frame: the whole frame
    torch.testing.assert_close(v["app_patch16+mot_patch16"], 0.5 * v["app_patch16"] + 0.5 * v["mot_patch16"])
    torch.testing.assert_close(v["app_psnr+mot_patch32"], 0.5 * v["app_psnr"] + 0.5 * v["mot_patch32"])
    assert not torch.equal(v["app_patch16"], v["app_psnr"])
    # the preset default's formula by name: equals the default score of a 0.5/0.5 model with 16-px patches
    torch.manual_seed(0)
    m16 = create_model("m2s2l_lite", image_size=32, score_patch=16, backend="torch").eval()
    assert (m16.config.score_w_appearance, m16.config.score_w_motion) == (0.5, 0.5)
    v16 = score_variants(m16, batch, ["default", "app_psnr+mot_patch16"])
    torch.testing.assert_close(v16["app_psnr+mot_patch16"], v16["default"])
    assert set(score_variants(model, batch, ["mot_patch32"])) == {"mot_patch32"}
    with pytest.raises(ValueError, match="score variant"):
        score_variants(model, batch, ["nope"])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_dataset(str(root), size=32, n_train=2, n_test=2, n_frames=64, seed=5)
    ck = root / "tiny.pt"
    save_checkpoint(make_checkpoint("m2s2l_lite", tiny(), calibration={"clips": ["01", "02"]}), str(ck))
    return str(root), str(ck)


def test_select_score_refuses_test_data(synth, tmp_path):
    root, ck = synth
    for split in ("testing", "Test"):
        with pytest.raises(ValueError, match="training split only"):
            select_score.main(["--ckpt", ck, "--data", root, "--split", split])
    with pytest.raises(ValueError, match="training split only"):
        select_score.main(["--ckpt", ck, "--data", os.path.join(root, "testing"), "--split", "frames"])


def test_select_score_end_to_end(synth, tmp_path):
    root, ck = synth
    out = tmp_path / "sel.json"
    chosen = select_score.main(["--ckpt", ck, "--data", root, "--seed", "0", "--json", str(out), "--threads", "1"])
    res = json.load(open(out))
    assert res["selected"] == chosen and res["clips"] == ["01", "02"] and res["split"] == "training"
    assert set(res["variants"]) == set(SCORE_VARIANTS) and res["n_frames_scored"] == 2 * (64 - 4)
    assert all(0 <= r["micro_auc"] <= 1 for r in res["variants"].values())
    best = max(r["micro_auc"] for r in res["variants"].values())
    assert round(res["variants"][chosen]["micro_auc"], 3) == round(best, 3)
    assert all(e["start"] >= 4 for ev in res["events"].values() for e in ev)
    assert res["difficulty"] == "standard"
    hard = tmp_path / "hard.json"
    select_score.main(["--ckpt", ck, "--data", root, "--json", str(hard), "--threads", "1", "--difficulty", "hard"])
    res_h = json.load(open(hard))
    assert res_h["difficulty"] == "hard" and res_h["events"] != res["events"]
    assert all(e["skip"] == 2 for ev in res_h["events"].values() for e in ev if e["kind"] == "skip")
    with pytest.raises(ValueError, match="difficulty"):
        select_score.main(["--ckpt", ck, "--data", root, "--difficulty", "nope"])


def test_select_rule_prefers_fewer_terms_on_ties():
    r = {"default": {"micro_auc": 0.9001}, "app_patch16": {"micro_auc": 0.9004}, "mot_patch16": {"micro_auc": 0.8}}
    assert select_score.select(r) == "app_patch16"
    r["default"]["micro_auc"] = 0.92
    assert select_score.select(r) == "default"


def test_eval_with_a_score_variant(synth, tmp_path):
    root, ck = synth
    metrics = {}
    for variant in ("default", "app_patch16"):
        ev = tmp_path / variant
        assert main(["eval", "--data", root, "--ckpt", ck, "--out", str(ev), "--device", "cpu", "--no-plot",
                     "--score", variant, "--batch-size", "32"]) == 0
        metrics[variant] = json.load(open(ev / "metrics.json"))
        assert metrics[variant]["score_variant"] == variant and 0 <= metrics[variant]["micro_auc"] <= 1
    raw = {v: np.loadtxt(tmp_path / v / "scores.csv", delimiter=",", skiprows=1, usecols=4) for v in metrics}
    assert raw["default"].shape == raw["app_patch16"].shape and not np.allclose(raw["default"], raw["app_patch16"])
    with pytest.raises(SystemExit):
        main(["eval", "--data", root, "--ckpt", ck, "--out", str(tmp_path / "x"), "--score", "nope"])
