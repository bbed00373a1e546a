"""Training engine and CLI on a tiny contract-satisfying model: outputs, checkpoint format, exact resume,
time budget, errors. (The real model is exercised by the demo test.)"""
import csv
import json
import os

import pytest
import torch
import tiny_model  # noqa: F401  (registers "tiny_test")

from m2s2l.cli import main
from m2s2l.data.synthetic import make_dataset
from m2s2l.engine.checkpoint import KEYS, load_checkpoint

TRAIN = ["--config", "tiny_test", "--batch-size", "8", "--device", "cpu", "--no-amp", "--log-every", "2",
         "--lr", "3e-3", "--deterministic"]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention on a busy 2-core box
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth"))
    make_dataset(root, size=24, n_train=3, n_test=3, n_frames=20, seed=3)
    return root


def _sd(path):
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_train_eval_end_to_end(data, tmp_path):
    run, ev = str(tmp_path / "run"), str(tmp_path / "eval")
    assert main(["train", "--data", data, "--out", run, "--epochs", "2", "--val-clips", "1", "--select", "best",
                 *TRAIN]) == 0
    assert {"last.pt", "best.pt", "model.pt", "metrics.jsonl"} <= set(os.listdir(run))
    best, final = _sd(os.path.join(run, "best.pt")), _sd(os.path.join(run, "model.pt"))
    assert all(torch.equal(best[k], final[k]) for k in best)  # --select best: model.pt holds best.pt's weights
    recs = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    events = [r["event"] for r in recs]
    assert events[0] == "start" and events.count("epoch") == 2 and events[-1] == "done"
    train_recs = [r for r in recs if r["event"] == "train"]
    assert all(k in train_recs[0] for k in ("loss", "lr", "frames_per_s", "eta_s", "appearance"))
    assert all("val_loss" in r for r in recs if r["event"] == "epoch")

    model, ck = load_checkpoint(os.path.join(run, "last.pt"))
    assert set(ck) == set(KEYS) and ck["model"] == "tiny_test" and ck["epoch"] == 2 and ck["position"] == 0
    assert ck["config"]["image_size"] == 16 and ck["optimizer"] is not None and ck["extra"]["finished"]
    cal = ck["calibration"]
    assert cal["source"] == "val" and cal["clips"] == ["02"] and cal["threshold"] > cal["mean"] > 0
    assert ck["train_args"]["epochs"] == 2 and ck["scheduler"]["kind"] == "warmup_cosine"
    weights_only = torch.load(os.path.join(run, "model.pt"), weights_only=False)
    assert weights_only["optimizer"] is None and weights_only["calibration"] == cal

    assert main(["eval", "--data", data, "--ckpt", os.path.join(run, "model.pt"), "--out", ev, "--device", "cpu",
                 "--smooth", "1.5"]) == 0
    rows = list(csv.DictReader(open(os.path.join(ev, "scores.csv"))))
    assert len(rows) == 3 * (20 - 2) and rows[0]["clip"] == "01" and rows[0]["frame"] == "2"
    m = json.load(open(os.path.join(ev, "metrics.json")))
    assert 0 <= m["micro_auc"] <= 1 and 0 <= m["macro_auc"] <= 1 and m["n_frames"] == 54
    assert m["smoothing"]["sigma"] == 1.5 and m["labels"].endswith("labels.csv")
    assert os.path.isfile(os.path.join(ev, "score_curves.png"))


def test_resume_is_exact(data, tmp_path):
    """2 epochs in one go == 1 epoch + resume; and == a stop in the middle of an epoch + resume (dropout on)."""
    a, b, c = (str(tmp_path / n) for n in "abc")
    common = ["--data", data, "--epochs", "2", *TRAIN]
    assert main(["train", "--out", a, *common]) == 0
    assert main(["train", "--out", b, "--stop-after-epochs", "1", *common]) == 0
    assert not os.path.exists(os.path.join(b, "model.pt"))
    assert torch.load(os.path.join(b, "last.pt"), weights_only=False)["epoch"] == 1
    assert main(["train", "--out", b, "--resume", *common]) == 0
    assert main(["train", "--out", c, "--stop-after-steps", "3", *common]) == 0
    ck = torch.load(os.path.join(c, "last.pt"), weights_only=False)
    assert (ck["epoch"], ck["position"], ck["step"]) == (0, 24, 3)
    assert main(["train", "--out", c, "--resume", *common]) == 0
    ref = _sd(os.path.join(a, "model.pt"))
    for other in (b, c):
        sd = _sd(os.path.join(other, "model.pt"))
        assert all(torch.equal(ref[k], sd[k]) for k in ref), f"resumed run {other} differs"
    cal_a = torch.load(os.path.join(a, "model.pt"), weights_only=False)["calibration"]
    assert cal_a == torch.load(os.path.join(b, "model.pt"), weights_only=False)["calibration"]


def test_time_budget_and_half_checkpoints(data, tmp_path):
    run = str(tmp_path / "run")
    assert main(["train", "--data", data, "--out", run, "--epochs", "3", "--max-minutes", "1e-9", "--save-half",
                 *TRAIN]) == 0
    ck = torch.load(os.path.join(run, "last.pt"), weights_only=False)
    assert ck["step"] == 1 and ck["position"] == 8 and not ck["extra"]["finished"]
    assert all(v.dtype == torch.float16 for v in ck["state_dict"].values() if v.is_floating_point())
    model, _ = load_checkpoint(os.path.join(run, "last.pt"))
    assert next(model.parameters()).dtype == torch.float32
    assert main(["train", "--data", data, "--out", run, "--epochs", "1", "--resume", "--save-half", *TRAIN]) == 0
    assert os.path.isfile(os.path.join(run, "model.pt"))


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), *TRAIN]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--set", "nope=1", *TRAIN]) == 2
    assert "unknown config field" in capsys.readouterr().err
    assert main(["eval", "--data", str(tmp_path), "--ckpt", str(tmp_path / "x.pt"), "--out", str(tmp_path)]) == 2
    assert "x.pt" in capsys.readouterr().err


@pytest.mark.gpu
def test_gpu_bf16_training_with_frames_on_gpu(data, tmp_path):
    run = str(tmp_path / "run")
    args = [a for a in TRAIN if a not in ("--no-amp", "--deterministic")]
    args[args.index("--device") + 1] = "cuda"
    assert main(["train", "--data", data, "--out", run, "--epochs", "2", "--val-clips", "1", *args]) == 0
    recs = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert recs[0]["data_device"].startswith("cuda") and recs[0]["device"].startswith("cuda")
    ck = torch.load(os.path.join(run, "model.pt"), weights_only=False)
    assert ck["calibration"]["n_frames"] > 0 and all(torch.isfinite(v).all() for v in ck["state_dict"].values())


def test_sharded_checkpoints_resume_and_load(data, tmp_path):
    from m2s2l.engine.checkpoint import read_checkpoint
    run = str(tmp_path / "run")
    common = ["--data", data, "--out", run, "--epochs", "2", "--shard-mib", "0.004", *TRAIN]
    assert main(["train", "--stop-after-epochs", "1", *common]) == 0
    first = sorted(f for f in os.listdir(run) if ".shard" in f)
    assert os.path.getsize(os.path.join(run, "last.pt")) < 2000 and len(first) >= 4
    assert all(os.path.getsize(os.path.join(run, f)) <= 0.004 * 2**20 for f in first)
    assert main(["train", "--resume", *common]) == 0
    ck = read_checkpoint(os.path.join(run, "last.pt"))
    assert ck["epoch"] == 2 and ck["extra"]["finished"]
    assert not set(first) & set(os.listdir(run))  # the replaced checkpoint's shards are gone
    model, ck2 = load_checkpoint(os.path.join(run, "model.pt"))
    assert ck2["calibration"] == ck["calibration"]
    os.remove(os.path.join(run, sorted(f for f in os.listdir(run) if f.startswith("model.pt."))[0]))
    with pytest.raises(FileNotFoundError, match="shard"):
        load_checkpoint(os.path.join(run, "model.pt"))



def test_fit_epochs_shrinks_and_regrows_within_the_budget(monkeypatch):
    """--fit-minutes: the epoch count follows the measured epoch time, bounded by --epochs and the epochs done."""
    import argparse

    from m2s2l.engine import train as tr
    from m2s2l.engine.distributed import DistInfo

    now = [1000.0]
    monkeypatch.setattr(tr.time, "time", lambda: now[0])
    args = argparse.Namespace(fit_minutes=10.0, epochs=50, max_epochs=50)
    # a slow first epoch (JIT compilation): 120 s of 570 usable -> 1 + 3 more epochs
    assert tr.fit_epochs(args, 1, t_start=880.0, t_epoch=880.0, dist=DistInfo()) == 4
    args.epochs = 4
    # the next epoch took 10 s: the count grows again (capped by --epochs = 50)
    now[0] = 1010.0
    assert tr.fit_epochs(args, 2, t_start=880.0, t_epoch=1000.0, dist=DistInfo()) == 2 + int((570 - 130) // 10)
    now[0] = 1100.0
    assert tr.fit_epochs(args, 3, t_start=0.0, t_epoch=1090.0, dist=DistInfo()) == 3  # over budget: stop now
    args.fit_minutes = 1000.0
    assert tr.fit_epochs(args, 3, t_start=880.0, t_epoch=1090.0, dist=DistInfo()) == 50  # never above --epochs
