"""Mamba block cases: ``m2s2l.modules.Mamba`` (and ``BiMamba``) forward and forward+backward, end to end
(in_proj, conv, x_proj, dt_proj, scan, out_proj), at the video shape (16384 sequences of 8 frames, d_model 64:
one sequence per spatial location) and the long shape (batch 8, seqlen 2048, d_model 1024); BiMamba at the
spatial shape of the model's coarsest level (32 maps of 16x16 tokens, d_model 256).

Impls: "triton" / "cuda" / "torch" are the same block with ``.backend`` set ("cuda" when m2s2l._C is built;
"torch" = the float32 reference loops: timed once and without fwd+bwd for seqlen > 64);
"triton-chan" is the Triton block with ``layout="channel"`` (channel-contiguous scan inputs);
"mamba-ssm" is mamba_ssm's own Mamba block loaded with the same state_dict (same parameter names), when it
imports (fast path: causal-conv1d + its fused mamba_inner_fn).
Bytes (floor of the unfused pipeline, per token, dtype size): forward reads/writes each intermediate once --
x (d) read, xz (2*di) written, conv x (di) read + (di) written, x_proj (di) read + (R+2N) written, dt_proj (R)
read + delta (di) written, scan u, delta, z (3*di) + B, C (2N) read and y (di) written, out_proj (di) read and
out (d) written; forward+backward counts that twice more (gradients flow through the same tensors), i.e. 3x.
Weights are not counted. Exps: one exp(delta*A) per (token, di, N) forward, two with the backward.
"""
import torch

from common import DTYPES, Case, optional_attr

# (block, case name, (batch, seqlen, d_model)); rows are printed as op "mamba", shape (batch, seqlen, d_model)
SHAPES = [("mamba", "video", (16384, 8, 64)), ("mamba", "long", (8, 2048, 1024)),
          ("bimamba", "bi-spatial", (32, 256, 256))]
QUICK_SHAPES = [("mamba", "tiny-video", (256, 8, 32)), ("mamba", "tiny-long", (2, 256, 64)),
                ("bimamba", "tiny-bi", (4, 64, 32))]
D_STATE, D_CONV, EXPAND = 16, 4, 2


def _peer_cls():
    return optional_attr('mamba_ssm.modules.mamba_simple', 'Mamba')


def _run(block, x, dout, backend=None, layout=None):
    params = [p for p in block.parameters() if p.requires_grad]

    def setup():
        if backend is not None:
            block.backend = backend
        if layout is not None:
            block.layout = layout
    if dout is None:
        def fwd():
            setup()
            with torch.no_grad():
                return block(x)
        return fwd

    def fwdbwd():
        setup()
        out = block(x)
        return torch.autograd.grad(out, [x] + params, dout)
    return fwdbwd


def _block_bytes(tokens, d, di, R, N, esz, grad, bidir):
    per_tok = 2 * d + 2 * di + 2 * di + di + (R + 2 * N) + R + di + 3 * di + 2 * N + di + di
    if bidir:  # the reversed direction doubles every per-direction intermediate (and the flip copies x, z)
        per_tok += per_tok - 2 * d + 4 * di
    return tokens * per_tok * esz * (3 if grad else 1)


def cases(device, dtypes, modes, quick):
    from m2s2l.modules import BiMamba, Mamba
    from m2s2l.ops._backend import cuda_ext, interpret_mode
    on_gpu = torch.device(device).type == "cuda"
    peer_cls = _peer_cls() if on_gpu else None
    backends = (["triton"] if on_gpu or interpret_mode() else []) + ["torch"]
    if on_gpu and cuda_ext() is not None:
        backends.insert(1, "cuda")
    out = []
    for kind, name, (batch, L, d) in (QUICK_SHAPES if quick or not on_gpu else SHAPES):
        cls = Mamba if kind == "mamba" else BiMamba
        for dt in dtypes:
            dtype = DTYPES[dt]
            torch.manual_seed(0)
            block = cls(d, d_state=D_STATE, d_conv=D_CONV, expand=EXPAND, device=device, dtype=dtype)
            di, R = block.d_inner, block.dt_rank
            slow = L > 64  # the reference loops over time: one call, and no fwd+bwd (its graph holds every state)
            for mode in modes:
                grad = mode == "fwdbwd"
                x = torch.randn(batch, L, d, device=device, dtype=dtype, requires_grad=grad)
                dout = torch.randn_like(x) if grad else None
                impls = {}
                for bk in backends:
                    if bk == "torch" and grad and slow:
                        continue
                    # one block, backend (and for Mamba the activation layout) set per call
                    impls[bk] = _run(block, x, dout, backend=bk, layout="time" if kind == "mamba" else None)
                if kind == "mamba" and "triton" in backends:  # the channel-contiguous layout (Mamba.layout)
                    impls["triton-chan"] = _run(block, x, dout, backend="triton", layout="channel")
                if peer_cls is not None and kind == "mamba":
                    peer = peer_cls(d, d_state=D_STATE, d_conv=D_CONV, expand=EXPAND, device=device, dtype=dtype)
                    peer.load_state_dict(block.state_dict())
                    impls["mamba-ssm"] = _run(peer, x, dout)
                tokens = batch * L
                nbytes = _block_bytes(tokens, d, di, R, D_STATE, dtype.itemsize, grad, kind == "bimamba")
                exps = tokens * di * D_STATE * (2 if grad else 1) * (2 if kind == "bimamba" else 1)
                out.append(Case("mamba", name, f"({batch}, {L}, {d})", dt, mode, impls, nbytes,
                                exps, peer="mamba-ssm" if "mamba-ssm" in impls else None,
                                once={"torch"} if slow else set()))
    return out
