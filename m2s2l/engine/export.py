"""``m2s2l export``: the per-frame streaming step (state in, state out) as ONNX.

The exported graph is :class:`m2s2l.engine.stream.StreamStep`::

    inputs   frame (B, C, H, W), prev_frame (B, C, H, W)  -- float32 in [-1, 1], the model's size
             (``motion_target="flow"`` models: flow (B, 2, H, W), the optical flow from the previous frame to
             ``frame`` in pixels, computed by the caller with ``m2s2l.data.store.flow_fn``, instead of prev_frame)
             state_0 .. state_{L-1}  (B, T, C_l, H_l, W_l)  -- encoder pyramids of the T frames before ``frame``
    outputs  score (B,), appearance (B,), motion (B,), error_map (B, 1, H, W),
             new_state_0 .. new_state_{L-1} (B, T, C_l, H_l, W_l) -- feed back as ``state_*`` with the next frame

A caller keeps the state between frames (zeros + ``T`` encoder-only warm-up steps, or ``StreamScorer``); the
batch axis B is dynamic. The model's Mamba blocks call the ``m2s2l::`` custom ops (selective scan, causal
conv1d, LayerNorm with the Triton backend), which have no ONNX symbolic: during export :func:`pure_torch_ops`
swaps ``m2s2l.ops``'s public functions for plain PyTorch (``selective_scan_ref``, ``causal_conv1d_ref``, the ops'
own test oracles, and F.layer_norm), so the traced graph holds only standard ONNX operators (the scan over T is
unrolled; LayerNorm exports as ONNX LayerNormalization).
"""
import contextlib
import os
import sys

import numpy as np
import torch


@contextlib.contextmanager
def pure_torch_ops():
    """Within the block, ``m2s2l.ops.selective_scan_fn`` / ``causal_conv1d_fn`` / ``layer_norm`` /
    ``mamba_block_last`` / ``upsample_cat`` (looked up at call time by the Mamba, LayerNorm, MambaBlock and Decoder
    modules) run plain PyTorch (the naive references, F.layer_norm, F.interpolate + torch.cat) instead of the custom
    ops; restored on exit."""
    from m2s2l import ops
    from m2s2l.ops.layer_norm import _torch_layer_norm
    from m2s2l.triton_kernels.causal_conv1d.naive import causal_conv1d_ref
    from m2s2l.triton_kernels.mamba_block.naive import mamba_block_last_ref
    from m2s2l.triton_kernels.selective_scan.naive import selective_scan_ref
    from m2s2l.triton_kernels.upsample.naive import upsample_cat_ref

    def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
             *, initial_state=None, backend="auto", last_only=False):
        res = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                 initial_state)
        if not last_only:
            return res
        return (res[0][:, :, -1:], res[1]) if return_last_state else res[:, :, -1:]

    def conv(x, weight, bias=None, activation=None, initial_states=None, return_final_states=False, *,
             backend="auto"):
        return causal_conv1d_ref(x, weight, bias, activation, initial_states, return_final_states)

    def layer_norm(x, weight=None, bias=None, eps=1e-5, *, backend="auto", out_dtype=None):
        return _torch_layer_norm(x, weight, bias, eps, out_dtype)

    def block_last(x, *params, eps=1e-5, pool=1, out=None, backend="auto"):
        res = mamba_block_last_ref(x, *params, eps=eps, pool=pool)
        return res if out is None else out.copy_(res)

    def upsample_cat(x, skip, *, backend="auto"):
        return upsample_cat_ref(x, skip)

    names = ("selective_scan_fn", "causal_conv1d_fn", "layer_norm", "mamba_block_last", "upsample_cat")
    saved = [getattr(ops, n) for n in names]
    for n, f in zip(names, (scan, conv, layer_norm, block_last, upsample_cat)):
        setattr(ops, n, f)
    try:
        yield
    finally:
        for n, f in zip(names, saved):
            setattr(ops, n, f)


def example_step_inputs(model, batch=1, seed=0):
    """Deterministic random (frame, prev_frame or flow, *state) for the exported step, on the model's device."""
    c = model.config
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    frame = torch.rand(batch, c.in_channels, c.image_size, c.image_size, generator=g) * 2 - 1
    if getattr(c, "motion_target", "diff") == "flow":
        prev = torch.randn(batch, 2, c.image_size, c.image_size, generator=g)
    else:
        prev = torch.rand(batch, c.in_channels, c.image_size, c.image_size, generator=g) * 2 - 1
    state = [torch.randn(batch, c.clip_len, *s, generator=g) for s in model.feature_shapes()]
    return tuple(t.to(dev) for t in (frame, prev, *state))


def io_names(model):
    L = len(model.feature_shapes())
    motion_in = "flow" if getattr(model.config, "motion_target", "diff") == "flow" else "prev_frame"
    ins = ["frame", motion_in] + [f"state_{l}" for l in range(L)]
    outs = ["score", "appearance", "motion", "error_map"] + [f"new_state_{l}" for l in range(L)]
    return ins, outs


def export_onnx(model, path, opset=17, batch=1):
    """Export ``StreamStep(model)`` (float32, CPU) to ``path``; returns ``path``. The batch axis is dynamic."""
    from .stream import StreamStep
    model = model.float().cpu().eval()
    step = StreamStep(model).eval()
    ins, outs = io_names(model)
    dyn = {n: {0: "batch"} for n in ins + outs}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with pure_torch_ops(), torch.no_grad():
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings from the shape checks (constant for this config)
            torch.onnx.export(step, example_step_inputs(model, batch), path, input_names=ins, output_names=outs,
                              dynamic_axes=dyn, opset_version=opset, dynamo=False)
    return path


def check_onnx(model, path, batch=2, seed=1):
    """Max |onnxruntime - PyTorch| over all outputs of the step on random inputs (batch ``batch``)."""
    import onnxruntime as ort
    from .stream import StreamStep
    model = model.float().cpu().eval()
    inputs = example_step_inputs(model, batch, seed)
    with torch.no_grad():
        ref = [t.numpy() for t in StreamStep(model)(*inputs)]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ins, outs = io_names(model)
    got = sess.run(outs, {n: t.numpy() for n, t in zip(ins, inputs)})
    return max(float(np.max(np.abs(a - b))) for a, b in zip(ref, got))


def run_export(args):
    from .checkpoint import load_checkpoint
    model, ckpt = load_checkpoint(args.ckpt, "cpu")
    export_onnx(model, args.out, opset=args.opset)
    msg = f"export: {ckpt['model']} streaming step -> {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB)"
    if args.check:
        try:
            err = check_onnx(model, args.out)
        except ImportError:
            print("export: onnxruntime is not installed, skipping --check", file=sys.stderr)
        else:
            msg += f"; onnxruntime vs PyTorch max abs diff {err:.2e}"
    print(msg)
    return 0


def add_parser(subparsers):
    p = subparsers.add_parser("export", help="export the per-frame streaming step (state in/out) as ONNX")
    p.add_argument("--ckpt", required=True, help="checkpoint (model.pt)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--check", action="store_true", help="compare with PyTorch through onnxruntime")
    p.set_defaults(func=run_export)
