"""Causal depthwise conv1d cases: width 4, SiLU, bias, on the long (8, 4096, 2048) and video (16384, 128, 8)
shapes of shared/peers/ANCHORS.md.

Impls: "triton" (m2s2l.ops.causal_conv1d_fn, backend="triton", contiguous x), "triton-cl" (the same on a
channel-last x, i.e. (batch, seqlen, dim).transpose(1, 2), as a Mamba block produces it), "cuda-ext"
(our CUDA extension m2s2l._C, backend="cuda", when built), "F.conv1d" (the torch oracle:
F.conv1d(..., padding=width-1, groups=dim)[..., :L] then SiLU, in x's dtype), "causal-conv1d" (the peer's CUDA
causal_conv1d_fn, when ``import causal_conv1d`` works; the "vs peer" column compares against it).
Bytes (ideal): fwd = x read + out written; fwd+bwd adds x, dout read and dx written (weights are negligible).
"""
import torch
import torch.nn.functional as F

from common import DTYPES, Case, case_grid, optional_attr

WIDTH = 4
SHAPES = [("long", (8, 4096, 2048)), ("video", (16384, 128, 8))]
QUICK_SHAPES = [("tiny-long", (2, 64, 256)), ("tiny-video", (256, 32, 8))]


def _peer():
    return optional_attr('causal_conv1d', 'causal_conv1d_fn')


def _oracle(x, weight, bias, activation=None):
    L = x.shape[-1]
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=weight.shape[1] - 1, groups=x.shape[1])[..., :L]
    return F.silu(out) if activation == "silu" else out


def _inputs(shape, dtype, device, grad, channel_last=False):
    batch, dim, L = shape
    g = torch.Generator(device=device).manual_seed(0)
    xs = (batch, L, dim) if channel_last else (batch, dim, L)
    x = torch.randn(*xs, generator=g, device=device, dtype=torch.float32).to(dtype)
    x = x.transpose(1, 2) if channel_last else x
    w = (torch.randn(dim, WIDTH, generator=g, device=device) / WIDTH ** 0.5).to(dtype)
    b = torch.randn(dim, generator=g, device=device).to(dtype)
    for t in (x, w, b):
        t.requires_grad_(grad)
    return x, w, b


def _runner(fn, ins, dout, **kw):
    x, w, b = ins
    if dout is None:
        def run():
            with torch.no_grad():
                return fn(x, w, b, activation="silu", **kw)
    else:
        def run():
            return torch.autograd.grad(fn(x, w, b, activation="silu", **kw), (x, w, b), dout)
    return run


def cases(device, dtypes, modes, quick):
    from m2s2l.ops import causal_conv1d_fn
    from m2s2l.ops._backend import cuda_ext, interpret_mode
    on_gpu = torch.device(device).type == "cuda"
    peer = _peer() if on_gpu else None
    out = []
    for name, shape, dt, mode, grad in case_grid(SHAPES, QUICK_SHAPES, dtypes, modes, on_gpu, quick):
        batch, dim, L = shape
        dtype = DTYPES[dt]
        ins = _inputs(shape, dtype, device, grad)
        dout = torch.randn_like(ins[0]) if grad else None
        impls = {}
        if on_gpu or interpret_mode():
            impls["triton"] = _runner(causal_conv1d_fn, ins, dout, backend="triton")
            ins_cl = _inputs(shape, dtype, device, grad, channel_last=True)
            impls["triton-cl"] = _runner(causal_conv1d_fn, ins_cl, dout, backend="triton")
        if on_gpu and cuda_ext() is not None:
            impls["cuda-ext"] = _runner(causal_conv1d_fn, ins, dout, backend="cuda")
        impls["F.conv1d"] = _runner(_oracle, ins, dout)
        if peer is not None:
            impls["causal-conv1d"] = _runner(peer, ins, dout)
        io = batch * dim * L * dtype.itemsize
        nbytes = 2 * io if not grad else 5 * io
        out.append(Case("conv", name, f"({batch}, {dim}, {L}) W={WIDTH}", dt, mode, impls, nbytes,
                        peer="causal-conv1d" if peer is not None else None))
    return out
