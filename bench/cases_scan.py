"""Selective scan cases: the ANCHORS.md setup (N = 16, input-dependent B and C of shape (batch, 1, N, L), z, D,
delta_bias, delta_softplus=True) on the LM, spatial and temporal (video) shapes.

Impls: "triton" (m2s2l.ops.selective_scan_fn, backend="triton"), "triton-kern" (the launchers alone),
"cuda-ext" / "cuda-kern" (the same for our CUDA extension m2s2l._C, backend="cuda", when it is built),
"triton-chan" (the op on u, delta, z stored channel-contiguous, stride (dim*L, 1, dim): the layout a Mamba
block with ``layout="channel"`` hands it), "triton-tr" (time-layout inputs copied to that layout inside the timed
call: what converting in the op would cost and gain), "torch" (the float32 reference loop; slow shapes timed
with one call, fwd+bwd only where the autograd graph is small), "mamba-ssm" (its CUDA selective_scan_fn, when ``mamba_ssm.ops.selective_scan_interface`` imports).
Bytes (ideal): fwd = u, delta, z, B, C read + out written; fwd+bwd adds u, delta, z, B, C, dout read and
du, ddelta, dz, dB, dC written. Exps (ideal): one exp(delta*A) per (batch, dim, seqlen, N) forward, two for
fwd+bwd (the backward must recompute them); the softplus/silu exponentials are per (batch, dim, seqlen) and
not counted.
"""
import torch

from common import DTYPES, Case, case_grid, optional_attr

N = 16
SHAPES = [("LM", (8, 2048, 2048)), ("spatial", (16, 192, 4096)), ("temporal8", (16384, 128, 8)),
          ("temporal16", (4096, 256, 16))]
QUICK_SHAPES = [("tiny-long", (1, 16, 64)), ("tiny-video", (64, 16, 8))]


def _peer():
    return optional_attr('mamba_ssm.ops.selective_scan_interface', 'selective_scan_fn')


def _inputs(shape, dtype, device, grad):
    batch, dim, L = shape
    g = torch.Generator(device=device).manual_seed(0)
    rnd = lambda *s, dt=dtype: torch.randn(*s, generator=g, device=device, dtype=torch.float32).to(dt)  # noqa: E731
    ins = dict(u=rnd(batch, dim, L), delta=rnd(batch, dim, L) * 0.5 - 1.0,
               A=-torch.arange(1, N + 1, device=device, dtype=torch.float32).repeat(dim, 1),
               B=rnd(batch, 1, N, L), C=rnd(batch, 1, N, L), D=rnd(dim, dt=torch.float32),
               z=rnd(batch, dim, L), delta_bias=rnd(dim, dt=torch.float32) * 0.1)
    for v in ins.values():
        v.requires_grad_(grad)
    return ins


def _call(fn, ins, **kw):
    return fn(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], ins["D"], ins["z"], ins["delta_bias"],
              delta_softplus=True, **kw)


def _fwd(fn, ins, **kw):
    def run():
        with torch.no_grad():
            return _call(fn, ins, **kw)
    return run


def _fwdbwd(fn, ins, dout, **kw):
    leaves = list(ins.values())

    def run():
        out = _call(fn, ins, **kw)
        return torch.autograd.grad(out, leaves, dout)
    return run


def _channel_major(t):
    """The same values with channels contiguous: (batch, dim, L) with strides (dim * L, 1, dim)."""
    return t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(t.requires_grad)


def _chan_inputs(ins):
    return {k: _channel_major(v) if k in ("u", "delta", "z") else v for k, v in ins.items()}


def _converting(fn):
    """fn called on u, delta, z converted to the channel-contiguous layout inside the call (the copies timed)."""
    def call(u, delta, A, B, C, D, z, delta_bias, **kw):
        cm = lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731
        return fn(cm(u), cm(delta), A, B, C, D, cm(z), delta_bias, **kw)
    return call


def _kernels(ins, dout, last_only=False):
    """The Triton launchers alone (no validation, no custom-op/autograd dispatch): the kernels' own time;
    ``last_only`` (forward only): the last step's output alone."""
    from m2s2l.triton_kernels.selective_scan.scan import selective_scan_bwd, selective_scan_fwd
    a = [ins[k].detach() for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]

    def run():
        out, _, hc = selective_scan_fwd(*a, None, True, False, dout is not None, last_only=last_only)
        if dout is not None:
            return selective_scan_bwd(dout, *a, None, hc, True)
        return out
    return run


def _cuda_kernels(ins, dout):
    """The CUDA extension's wrappers alone (m2s2l.ops._cuda): the kernels' own time, like _kernels."""
    from m2s2l.ops import _cuda
    a = [ins[k].detach() for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]

    def run():
        out, _, saved = _cuda.selective_scan_fwd(*a, None, True, dout is not None)
        if dout is not None:
            return _cuda.selective_scan_bwd(dout, None, *a, None, saved, True)
        return out
    return run


def _ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    from m2s2l.triton_kernels.selective_scan.naive import selective_scan_ref
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def cases(device, dtypes, modes, quick):
    from m2s2l.ops import selective_scan_fn
    from m2s2l.ops._backend import cuda_ext, interpret_mode
    on_gpu = torch.device(device).type == "cuda"
    peer = _peer() if on_gpu else None
    out = []
    for name, shape, dt, mode, grad in case_grid(SHAPES, QUICK_SHAPES, dtypes, modes, on_gpu, quick):
        batch, dim, L = shape
        esz = DTYPES[dt].itemsize
        ins = _inputs(shape, DTYPES[dt], device, grad)
        dout = torch.randn_like(ins["u"]) if grad else None
        wrap = (lambda f, **kw: _fwdbwd(f, ins, dout, **kw)) if grad else (lambda f, **kw: _fwd(f, ins, **kw))
        impls = {}
        if on_gpu or interpret_mode():
            impls["triton"] = wrap(selective_scan_fn, backend="triton")
            impls["triton-kern"] = _kernels(ins, dout)
            chan = _chan_inputs(ins)
            impls["triton-chan"] = (_fwdbwd(selective_scan_fn, chan, dout, backend="triton") if grad
                                    else _fwd(selective_scan_fn, chan, backend="triton"))
            impls["triton-tr"] = wrap(_converting(selective_scan_fn), backend="triton")
        if on_gpu and cuda_ext() is not None:
            impls["cuda-ext"] = wrap(selective_scan_fn, backend="cuda")
            impls["cuda-kern"] = _cuda_kernels(ins, dout)
        big = batch * dim * L * N >= (1 << 29)
        if not (grad and big):  # the reference's autograd graph holds every step's state
            impls["torch"] = wrap(_ref)
        if peer is not None:
            impls["mamba-ssm"] = wrap(peer)
        io = batch * dim * L * esz
        bc = 2 * batch * N * L * esz
        nbytes = 4 * io + bc if not grad else (4 * io + bc) + (4 * io + bc) + (3 * io + bc)
        exps = batch * dim * L * N * (2 if grad else 1)
        out.append(Case("scan", name, f"({batch}, {dim}, {L}) N={N}", dt, mode, impls, nbytes, exps,
                        peer="mamba-ssm" if peer is not None else None,
                        once={"torch"} if big or L > 64 else set()))
    return out
