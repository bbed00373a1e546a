"""``m2s2l export``: the streaming step as ONNX equals PyTorch under onnxruntime (dynamic batch)."""
import re

import numpy as np
import pytest
import torch

from m2s2l import ops
from m2s2l.cli import main
from m2s2l.engine.checkpoint import make_checkpoint, save_checkpoint
from m2s2l.engine.export import check_onnx, example_step_inputs, io_names
from m2s2l.engine.stream import StreamStep
from m2s2l.models import create_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
# float32, the same reference math in both runtimes: differences are summation-order rounding (~1e-6 on scores
# in dB and on the features); the test allows 1e-4.
ATOL = 1e-4


def test_export_cli_and_onnxruntime_matches_pytorch(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("m2s2l_lite", image_size=32, in_channels=1, backend="torch").eval()
    ck = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint("m2s2l_lite", model), str(ck))
    path = tmp_path / "scorer.onnx"
    before = ops.selective_scan_fn, ops.causal_conv1d_fn, ops.layer_norm
    assert main(["export", "--ckpt", str(ck), "--out", str(path), "--check"]) == 0
    assert (ops.selective_scan_fn, ops.causal_conv1d_fn, ops.layer_norm) == before  # the export-only swap is undone
    diff = float(re.search(r"max abs diff ([0-9.e+-]+)", capsys.readouterr().out).group(1))
    assert diff < ATOL
    graph = onnx.load(str(path)).graph
    assert all(n.domain in ("", "ai.onnx") for n in graph.node)          # no m2s2l:: custom op left
    assert check_onnx(model, str(path), batch=3, seed=5) < ATOL           # dynamic batch
    # state out == state in shifted by one frame + the new frame's encoder pyramid
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ins, outs = io_names(model)
    inputs = example_step_inputs(model, 1, seed=2)
    got = sess.run(outs, {n: t.numpy() for n, t in zip(ins, inputs)})
    L = len(model.feature_shapes())
    with torch.no_grad():
        feats = model.encode_frames(inputs[0])
    for l in range(L):
        new = got[4 + l]
        np.testing.assert_allclose(new[:, :-1], inputs[2 + l][:, 1:].numpy(), rtol=0, atol=0)
        np.testing.assert_allclose(new[:, -1], feats[l].numpy(), rtol=0, atol=ATOL)
    with torch.no_grad():
        ref = StreamStep(model)(*inputs)[0].numpy()
    np.testing.assert_allclose(got[0], ref, rtol=0, atol=ATOL)


def test_export_flow_model_takes_flow_input(tmp_path):
    """motion_target="flow": the exported step's second input is the flow (B, 2, H, W), and ORT == PyTorch."""
    torch.manual_seed(1)
    model = create_model("m2s2l_lite", image_size=32, in_channels=1, backend="torch", motion_target="flow").eval()
    from m2s2l.engine.export import export_onnx
    path = export_onnx(model, str(tmp_path / "flow.onnx"))
    ins, _ = io_names(model)
    assert ins[:2] == ["frame", "flow"]
    assert example_step_inputs(model, 2)[1].shape == (2, 2, 32, 32)
    assert check_onnx(model, path, batch=2, seed=4) < ATOL


def test_export_with_triton_layer_norm(tmp_path):
    """LayerNorm modules on the Triton backend (a custom op / autograd Function, not exportable) export as ONNX
    LayerNormalization through pure_torch_ops, and onnxruntime matches the PyTorch run, which uses the kernel
    (interpreted on CPU; the Mamba blocks stay on the torch backend to keep this fast)."""
    from m2s2l.engine.export import export_onnx
    from m2s2l.modules import LayerNorm
    from m2s2l.ops._backend import interpret_mode
    if not torch.cuda.is_available() and not interpret_mode():
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1")
    torch.manual_seed(0)
    model = create_model("m2s2l_lite", image_size=16, in_channels=1, backend="torch").eval()
    norms = [m for m in model.modules() if isinstance(m, LayerNorm)]
    assert norms
    for m in norms:
        m.backend = "triton"
    path = export_onnx(model, str(tmp_path / "ln.onnx"))
    assert ops.layer_norm.__module__ == "m2s2l.ops.layer_norm"              # swap undone
    graph = onnx.load(path).graph
    assert all(n.domain in ("", "ai.onnx") for n in graph.node)
    assert sum(n.op_type == "LayerNormalization" for n in graph.node) == len(norms)
    assert check_onnx(model, path, batch=2, seed=3) < ATOL
