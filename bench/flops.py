"""Count the FLOPs of a model preset with fvcore: ``python bench/flops.py --preset m2s2l_paper [--json]``.

What is counted: ``model.forward(clip)`` for batch 1 and one clip of T frames at the preset's image size
(the spatial encoder on all T frames, the temporal and spatial Mamba blocks, the decomposition and both
decoders) -- i.e. the cost of scoring one frame in clip mode. fvcore conventions: one multiply-add = one
FLOP for convolutions, linear layers and matmuls; norms and upsampling by fvcore's own handles. Our
custom ops, which fvcore cannot see into, are counted by the handles below:
  m2s2l::selective_scan_fwd  9 * batch * dim * L * d_state (mamba-ssm's count) + batch*dim*L for the
                             D skip + batch*dim*L for the z gate when present
  m2s2l::causal_conv1d_fwd   batch * dim * L * width (one multiply-add per tap: what fvcore counts for
                             the same depthwise conv through aten::_convolution)
  m2s2l::layer_norm_fwd      numel * (5 with weight, else 4): fvcore's own aten::layer_norm count (the LayerNorm
                             module itself records aten::layer_norm when traced; this serves direct op calls)
  m2s2l::upsample_cat_fwd    4 per resized output value (fvcore's aten::upsample_bilinear2d count); the
                             concatenation, a copy, is not counted (as aten::cat)
Elementwise ops and reductions (activations, residual adds, softplus/exp inside modules, means) are not
counted, as is usual for fvcore numbers; they are listed under "uncounted_elementwise_ops". Any other op
fvcore does not know is an error and is listed under "unsupported_ops" (it must stay empty).
With --json the last printed line is a JSON object. --all-steps counts the architecture as drawn (every temporal block
on every step) instead of what runs (only the used last step of each branch's last block).
"""
import argparse
import json
import logging
import os
import sys
from collections import Counter

import torch

# Ops fvcore has no handle for but which are elementwise/reductions (by convention not counted).
ELEMENTWISE = {
    "aten::add", "aten::add_", "aten::sub", "aten::rsub", "aten::mul", "aten::mul_", "aten::div", "aten::neg",
    "aten::silu", "aten::silu_", "aten::softplus", "aten::exp", "aten::tanh", "aten::sigmoid", "aten::mean",
    "aten::sum", "aten::pixel_shuffle", "aten::avg_pool2d", "aten::pow", "aten::log10", "aten::amax",
    "aten::flip", "aten::expand_as", "aten::repeat", "aten::pad", "aten::softmax",
}


def _shape(v):
    t = v.type()
    if t.kind() == "NoneType":
        return None
    try:
        return t.sizes()
    except RuntimeError:
        return None


def scan_flop_jit(inputs, outputs):
    """m2s2l::selective_scan_fwd(u, delta, A, B, C, D, z, ...): u (batch, dim, L), A (dim, d_state)."""
    batch, dim, L = _shape(inputs[0])
    d_state = _shape(inputs[2])[1]
    flops = 9 * batch * dim * L * d_state
    if _shape(inputs[5]) is not None:   # D
        flops += batch * dim * L
    if _shape(inputs[6]) is not None:   # z
        flops += batch * dim * L
    return flops


def conv1d_flop_jit(inputs, outputs):
    """m2s2l::causal_conv1d_fwd(x, weight, ...): x (batch, dim, L), weight (dim, width)."""
    batch, dim, L = _shape(inputs[0])
    width = _shape(inputs[1])[1]
    return batch * dim * L * width


def layer_norm_flop_jit(inputs, outputs):
    """m2s2l::layer_norm_fwd(x, weight, bias, eps, out_dtype): as fvcore's norm handle for aten::layer_norm."""
    numel = 1
    for d in _shape(inputs[0]):
        numel *= d
    return numel * (5 if _shape(inputs[1]) is not None else 4)


def upsample_cat_flop_jit(inputs, outputs):
    """m2s2l::upsample_cat_fwd(x, skip): as fvcore's handle for aten::upsample_bilinear2d (4 per resized output
    value); the concatenation is a copy (not counted, as aten::cat)."""
    B, Cx = _shape(inputs[0])[:2]
    H, W = _shape(inputs[1])[2:]
    return 4 * B * Cx * H * W


HANDLES = {"m2s2l::selective_scan_fwd": scan_flop_jit, "m2s2l::causal_conv1d_fwd": conv1d_flop_jit,
           "m2s2l::layer_norm_fwd": layer_norm_flop_jit, "m2s2l::upsample_cat_fwd": upsample_cat_flop_jit}


def set_all_steps(model):
    """Every temporal Mamba block on every step (the architecture as drawn; the model computes only the steps it
    uses: out_proj and the residual of each branch's last block on the last step)."""
    from m2s2l.models.temporal import MultiTemporalMamba
    for m in model.modules():
        if isinstance(m, MultiTemporalMamba):
            m.last_only = False
    return model


def count(model, inputs):
    """-> (fvcore FlopCountAnalysis, uncounted elementwise Counter, unsupported Counter)."""
    from fvcore.nn import FlopCountAnalysis
    fca = FlopCountAnalysis(model, inputs).set_op_handle(**HANDLES)
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    fca.total()
    unsupported = fca.unsupported_ops()
    elementwise = Counter({k: v for k, v in unsupported.items() if k in ELEMENTWISE})
    other = Counter({k: v for k, v in unsupported.items() if k not in ELEMENTWISE})
    return fca, elementwise, other


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="m2s2l_paper")
    p.add_argument("--json", action="store_true", help="last line: JSON summary")
    p.add_argument("--depth", type=int, default=3, help="module depth of the table")
    p.add_argument("--all-steps", action="store_true",
                   help="the architecture's count: every temporal block on every step (MultiTemporalMamba.last_only "
                        "= False), as if the unused steps of each branch's last block were computed")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="config overrides, e.g. image_size=128 (Python literals)")
    a = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import ast

    from fvcore.nn import flop_count_table

    from m2s2l.models import create_model
    overrides = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        try:
            overrides[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            overrides[k] = v
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    torch.manual_seed(0)
    model = create_model(a.preset, backend="torch", **overrides).eval()
    if a.all_steps:
        set_all_steps(model)
    inputs = model.example_inputs(1)
    with torch.no_grad():
        fca, elementwise, other = count(model, inputs)
    print(flop_count_table(fca, max_depth=a.depth))
    total = fca.total()
    params = sum(p.numel() for p in model.parameters())
    by_op = {k: round(v / 1e9, 4) for k, v in fca.by_operator().items()}
    print(f"{a.preset}: {total / 1e9:.2f} GFLOPs (fvcore, batch 1, one clip of T={model.config.clip_len} "
          f"frames at {model.config.image_size}x{model.config.image_size}), {params / 1e6:.2f} M params")
    print("GFLOPs by operator:", by_op)
    if elementwise:
        print("uncounted elementwise ops:", dict(elementwise))
    if other:
        print("UNSUPPORTED ops (not counted):", dict(other))
    if a.json:
        print(json.dumps({"preset": a.preset, "gflops": round(total / 1e9, 4), "params_m": round(params / 1e6, 4),
                          "unsupported_ops": sorted(other), "uncounted_elementwise_ops": sorted(elementwise),
                          "by_operator_gflops": by_op, "image_size": model.config.image_size,
                          "clip_len": model.config.clip_len, "overrides": overrides}))
    return 1 if other else 0


if __name__ == "__main__":
    sys.exit(main())
