"""DDP (issue 9) on CPU: torchrun with 2 gloo processes runs the same `m2s2l train` / `m2s2l eval` code path.

One optimisation step on 2 ranks (per-rank batch 16, global 32) must give the parameters of one step on 1 rank
with batch 32. Tolerance: atol 1e-6 / rtol 1e-5 in float32 -- the two runs differ only in the order of the
gradient sums (all-reduce of two half-batch means vs one mean over the whole batch), ~1e-8 relative, and AdamW's
first step (lr * g / (|g| + eps)) does not amplify it. Sharded evaluation must return the same scores, in the
same order, as single-process evaluation.
"""
import csv
import os
import signal
import subprocess
import sys

import pytest
import torch

import tiny_model  # noqa: F401
from m2s2l.cli import main
from m2s2l.data.synthetic import make_dataset

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = f"""
import sys
sys.path.insert(0, {HERE!r})
import tiny_model
from m2s2l.cli import main
argv, cmds = sys.argv[1:], []
while "--then" in argv:  # several commands in one launch: each worker imports torch once
    i = argv.index("--then")
    cmds.append(argv[:i])
    argv = argv[i + 1:]
for cmd in cmds + [argv]:
    rc = main(cmd)
    if rc:
        sys.exit(rc)
"""


def _common(data):
    # 2 train clips x (20 - 2) targets = 36 samples -> exactly 1 step per epoch at global batch 32
    return ["--data", data, "--config", "tiny_test", "--epochs", "1", "--device", "cpu", "--no-amp", "--lr", "1e-2",
            "--set", "dropout=0.0", "--seed", "5"]


def _run(cmd, env, timeout=240):
    """Run torchrun in its own session; on timeout kill the whole group (no orphaned workers)."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return -9, out, "TIMEOUT\n" + err
    return p.returncode, out, err


def _rows(path):
    return [(r["clip"], r["frame"], float(r["raw_score"])) for r in csv.DictReader(open(path))]


def test_ddp_two_gloo_ranks_equal_one_rank_with_double_batch(tmp_path):
    data = str(tmp_path / "data")
    make_dataset(data, size=24, n_train=2, n_test=2, n_frames=20, seed=1)
    script = tmp_path / "launch.py"
    script.write_text(SCRIPT)
    torch.set_num_threads(1)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert main(["train", "--out", one, "--batch-size", "32", *_common(data)]) == 0
    assert main(["eval", "--data", data, "--ckpt", os.path.join(one, "model.pt"), "--out", one + "_eval",
                 "--device", "cpu", "--batch-size", "7", "--no-plot"]) == 0

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([HERE] + sys.path))
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    r = _run(run + ["train", "--out", two, "--batch-size", "16", *_common(data), "--then",
                              "eval", "--data", data, "--ckpt", os.path.join(one, "model.pt"), "--out",
                              two + "_eval", "--device", "cpu", "--batch-size", "7", "--no-plot"],
                       env=env)
    assert r[0] == 0, r[1][-3000:] + r[2][-3000:]

    c1 = torch.load(os.path.join(one, "last.pt"), weights_only=False)
    c2 = torch.load(os.path.join(two, "last.pt"), weights_only=False)
    assert c1["step"] == c2["step"] == 1 and c2["extra"]["world_size"] == 2 and c2["extra"]["global_batch"] == 32
    init = tiny_model.TinyPredictor(tiny_model.TinyConfig())
    for k, v in c1["state_dict"].items():
        torch.testing.assert_close(c2["state_dict"][k], v, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(v, init.state_dict()[k]) or k.endswith("bias")  # the step did move weights
    cal1, cal2 = c1["calibration"], c2["calibration"]
    assert cal1["n_frames"] == cal2["n_frames"] and cal2["mean"] == pytest.approx(cal1["mean"], rel=1e-4)
    # sharded evaluation (ranks score positions r::2, then all_gather) == single process, row for row
    r1, r2 = _rows(os.path.join(one + "_eval", "scores.csv")), _rows(os.path.join(two + "_eval", "scores.csv"))
    assert [x[:2] for x in r1] == [x[:2] for x in r2] and len(r1) == 36
    assert all(abs(a[2] - b[2]) <= 1e-5 * abs(a[2]) + 1e-9 for a, b in zip(r1, r2))


def test_gpus_flag_becomes_a_torchrun_command():
    from m2s2l.cli import torchrun_command
    cmd = torchrun_command(["train", "--data", "d", "--gpus", "4", "--out", "o", "--gpus=4", "--epochs", "2"], 4)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "m2s2l", "train",
                       "--data", "d", "--out", "o", "--epochs", "2"]


def test_ddp_check_script_two_gloo_ranks_real_model(tmp_path):
    """bench/ddp_check.py -- the issue-9 equivalence check the GPU script runs on m2s2l_paper -- on CPU with gloo:
    the real M2S2L (fp32) at a tiny size, one DDP step on 2 ranks x batch 2 == one step on 1 process x batch 4,
    per tensor within max(1e-4 * max|g|, 8 * noise), noise = the reference against its own rerun and against a
    copy with the batch reversed and every weight moved by ~1 ulp. BatchNorm frozen, with the negative control (no all-reduce) that must FAIL by >= 10x;
    and BatchNorm synchronised (the gloo stand-in for SyncBatchNorm), where temporal.{0,1,2}.fuse.bias have a
    true gradient of exactly 0 (BatchNorm removes their per-channel shift): their rounding noise differs by ~100%
    between any two summation orders -- the failure the old fixed 1e-4 * max|g| rule reported on 2 H200s
    (1.52 of max|g|) -- which the noise floor must absorb."""
    root = os.path.dirname(os.path.dirname(HERE))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([root] + sys.path))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(root, "bench", "ddp_check.py"), "--config", "m2s2l_lite", "--device", "cpu", "--batch", "2",
           "--set", "in_channels=1", "--set", "image_size=16", "--set", "clip_len=2", "--set", "temporal_scales=[1,2]",
           "--set", "widths=[8,8,8,8]", "--bn", "both", "--control"]
    rc, out, err = _run(cmd, env=env, timeout=120)
    assert rc == 0 and "DDP CHECK PASS" in out, out[-3000:] + err[-3000:]
    lines = out.splitlines()
    frozen = next(l for l in lines if l.startswith("bn=frozen backend=auto float32: world 2 x batch 2 vs 1 x batch 4"))
    sync = next(l for l in lines if l.startswith("bn=sync backend=auto float32: world 2 x batch 2 vs 1 x batch 4"))
    assert frozen.endswith("-> PASS") and sync.endswith("-> PASS")
    # the CPU torch backend is deterministic: the same-input rerun is bitwise equal; the perturbed copy is not
    assert out.count("noise, ref vs rerun (same inputs): bitwise identical") == 2
    order = [l for l in lines if "noise, ref vs perturbed (reversed order, weights +-1 ulp):" in l]
    assert len(order) == 2 and all("of max|g|" in l for l in order)
    assert "control (no all-reduce) detected" in out   # the same check flags a step without the all-reduce
    ctrl = next(l for l in lines if l.startswith("CONTROL without DDP (bn=frozen"))
    assert float(ctrl.split("worst |diff|/tol ")[1].split()[0]) >= 10
    # sync: the structurally-zero gradients are the worst relative to max|g| (> 1e-2: the old rule fails) ...
    rel = float(sync.split("worst |diff|/max|g| ")[1].split(")")[0])
    assert rel > 1e-2, sync
    worst_rel = next(l for l in lines[lines.index(sync):] if "worst DDP vs ref (by |diff|/max|g|)" in l)
    assert worst_rel.split(":")[1].strip().startswith("temporal.") and ".fuse.bias" in worst_rel.split(";")[0]
    # ... and the running statistics of the synchronised BatchNorm equal the single-process ones
    assert "BN buffers equal within tol" in sync


def test_ddp_check_script_float64_is_exact(tmp_path):
    """``ddp_check.py --dtype float64`` (torch backend): with rounding ~1e9 smaller the DDP step equals the doubled-
    batch step almost exactly in both BatchNorm modes -- what separates the fp32 sync-BN differences seen on 2 H200s
    (rounding amplified by train-mode BatchNorm and ReLU kinks) from a real error, which float64 would keep."""
    root = os.path.dirname(os.path.dirname(HERE))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([root] + sys.path))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(root, "bench", "ddp_check.py"), "--config", "m2s2l_lite", "--device", "cpu", "--batch", "2",
           "--set", "in_channels=1", "--set", "image_size=16", "--set", "clip_len=2", "--set", "temporal_scales=[1,2]",
           "--set", "widths=[8,8,8,8]", "--bn", "both", "--dtype", "float64"]
    rc, out, err = _run(cmd, env=env, timeout=120)
    assert rc == 0 and "DDP CHECK PASS" in out, out[-3000:] + err[-3000:]
    rows = [l for l in out.splitlines() if l.startswith("bn=") and "backend=torch float64" in l]
    assert len(rows) == 2 and all(r.endswith("-> PASS") for r in rows), rows
    for r in rows:   # parameters after the step within 1e-3 * lr (the fp32 tolerance is 0.05 * lr; fp32 steps on
        # 2 H200s differed by 3e-6 = 0.016 * lr, float64 there by 3.6e-10): Adam's step amplifies the difference only
        # where |g| ~ eps (1e-8)
        assert float(r.split("params max abs diff ")[1].split()[0]) < 1e-3 * 2e-4, r
