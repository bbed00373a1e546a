"""mamba_block_last (the fused last step of a temporal Mamba block, inference) against its float64 reference and
against the unfused model path.

Tolerance: max |a - ref| / max(1, max |ref|). fp32: the kernel's GEMMs take exact float32 products
(``input_precision="ieee"``), so the error is float32 accumulation over <= 8 steps: 2e-5. bf16 / fp16 (autocast): the
kernel rounds what the unfused block stores in bf16 (xi, z, the conv output, dt/B/C, delta, y, out_proj's output)
at the same points, so it differs from the float64 reference by those roundings, a few bf16 ulps (2^-8 relative
each) through the scan and two projections: 4e-2. Output buffers come from the NaN-poisoned torch.empty
(tests/conftest.py): an element the kernel forgot to write is non-finite.
"""
import os

import pytest
import torch

from m2s2l.models.temporal import MambaBlock, MultiTemporalMamba
from m2s2l.modules import Mamba
from m2s2l.ops import mamba_block_last
from m2s2l.triton_kernels.mamba_block.naive import mamba_block_last_ref


def rel_err(a, ref):
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1.0)).item()


def make_block(d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", seed=0, device="cpu"):
    """A MambaBlock with every parameter randomised (norm affine, D, conv bias), so each one matters."""
    torch.manual_seed(seed)
    blk = MambaBlock(d_model, Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank))
    with torch.no_grad():
        blk.norm.weight.normal_(1, 0.3)
        blk.norm.bias.normal_(0, 0.3)
        blk.mixer.D.normal_()
        blk.mixer.conv1d.bias.normal_(0, 0.3)
        blk.mixer.A_log.add_(torch.rand_like(blk.mixer.A_log) * 0.5)
    return blk.to(device).eval()


def make_encoder(device, fused):
    """A MultiTemporalMamba (d 24, T 4, scales 1 and 2) with randomised D and norm bias, blocks ``fused`` as given,
    and a (2, 4, 24, 3, 5) feature map."""
    torch.manual_seed(1)
    mtm = MultiTemporalMamba(24, 4, (1, 2), 1, 16, 4, 2, "auto").to(device).eval()
    for b in mtm.branches:
        b[0].fused = fused
        with torch.no_grad():
            b[0].mixer.D.normal_()
            b[0].norm.bias.normal_(0, 0.3)
    return mtm, torch.randn(2, 4, 24, 3, 5, device=device)


def params(blk):
    m = blk.mixer
    return (blk.norm.weight, blk.norm.bias, m.in_proj.weight, m.conv1d.weight[:, 0], m.conv1d.bias, m.x_proj.weight,
            m.dt_proj.weight, m.dt_proj.bias, m.A_log, m.D, m.out_proj.weight)


CASES = [  # rows, seqlen, pool, d_model, d_state, d_conv, expand, dt_rank
    (37, 4, 1, 24, 16, 4, 2, "auto"),    # d_inner 48 (not a power of two), dt_rank 2
    (37, 4, 2, 24, 16, 4, 2, "auto"),
    (16, 8, 4, 32, 8, 3, 2, 3),          # d_state 8, d_conv 3, odd dt_rank
    (5, 1, 1, 16, 5, 2, 1, "auto"),      # one step, d_state 5 (padded), d_conv 2, fewer rows than a program
    (33, 6, 3, 20, 16, 1, 2, 16),        # d_conv 1 (no history), pool 3, dt_rank 16
    (17, 3, 1, 64, 16, 4, 2, "auto"),    # d_inner 128 (the widest in one chunk), dt_rank 4
    (19, 4, 1, 96, 16, 4, 2, "auto"),    # d_inner 192: 3 chunks of 64 (phase 1 sums x_proj over them), dt_rank 6
    (9, 8, 2, 128, 16, 4, 2, "auto"),    # d_inner 256: 4 chunks, pool 2
    (7, 8, 1, 72, 8, 3, 2, 5),           # d_inner 144: 3 chunks, the last one partial
]


@pytest.mark.parametrize("rows,T,pool,C,N,K,expand,rank", CASES)
def test_fp32_matches_float64_reference(rows, T, pool, C, N, K, expand, rank, device):
    blk = make_block(C, N, K, expand, rank, device=device)
    P = params(blk)
    x = torch.randn(rows, T, C, device=device) * 2 + 0.3
    with torch.no_grad():
        got = mamba_block_last(x, *P, pool=pool, backend="triton")
        ref = mamba_block_last_ref(x.double(), *[p.double() for p in P], pool=pool)
    assert got.shape == (rows, C) and got.dtype == torch.float32
    assert torch.isfinite(got).all()
    assert rel_err(got, ref) < 2e-5


@pytest.mark.parametrize("pool,dtype", [(1, torch.bfloat16), (2, torch.bfloat16), (2, torch.float16)])
def test_half_autocast_matches_reference_and_unfused_block(pool, dtype, device):
    blk = make_block(24, device=device)
    x = (torch.randn(40, 4, 24, device=device) * 2).to(dtype)
    xp = x if pool == 1 else x.reshape(40, 2, 2, 24).mean(2)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
        got = mamba_block_last(x, *params(blk), pool=pool, backend="triton")
        blk.fused = False
        unfused = blk(xp, last_only=True)[:, 0]
    ref = mamba_block_last_ref(x.double(), *[p.double() for p in params(blk)], pool=pool)
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert rel_err(got, ref) < 4e-2
    assert rel_err(unfused, ref) < 4e-2
    assert rel_err(got, unfused) < 4e-2


def test_strided_feature_map_in_place_and_out_slice(device):
    """x = a (B, T, C, H, W) map seen as (B, H*W, T, C) (no copy); out = a column slice of a wider buffer: the
    other columns stay untouched."""
    blk = make_block(16, d_state=8, device=device)
    feats = torch.randn(3, 4, 16, 5, 7, device=device)
    x = feats.flatten(3).permute(0, 3, 1, 2)
    buf = torch.full((3 * 35, 48), 7.0, device=device)
    out = buf[:, 16:32].view(3, 35, 16)
    with torch.no_grad():
        res = mamba_block_last(x, *params(blk), pool=2, out=out, backend="triton")
    ref = mamba_block_last_ref(x.double(), *[p.double() for p in params(blk)], pool=2)
    assert res.data_ptr() == out.data_ptr()
    assert rel_err(out, ref) < 2e-5
    assert (buf[:, :16] == 7).all() and (buf[:, 32:] == 7).all()


def test_torch_backend_is_the_reference(device):
    blk = make_block(16, device=device)
    x = torch.randn(9, 4, 16, device=device)
    with torch.no_grad():
        got = mamba_block_last(x, *params(blk), pool=2, backend="torch")
    ref = mamba_block_last_ref(x.double(), *[p.double() for p in params(blk)], pool=2)
    assert rel_err(got, ref) < 2e-5


def test_auto_falls_back_where_the_kernel_does_not_fit(device):
    """d_inner 256 on 9 steps (> 8, the chunked kernel's limit): "auto" computes the reference, "triton" refuses."""
    blk = make_block(128, device=device)
    x = torch.randn(4, 9, 128, device=device)
    with torch.no_grad():
        got = mamba_block_last(x, *params(blk))
        ref = mamba_block_last_ref(x.double(), *[p.double() for p in params(blk)])
        assert rel_err(got, ref) < 2e-5
        with pytest.raises(ValueError, match="d_inner"):
            mamba_block_last(x, *params(blk), backend="triton")


def test_bad_inputs_name_the_argument(device):
    blk = make_block(16, device=device)
    P = list(params(blk))
    x = torch.randn(4, 4, 16, device=device)
    with torch.no_grad():
        with pytest.raises(ValueError, match="pool"):
            mamba_block_last(x, *P, pool=3)
        with pytest.raises(ValueError, match="x"):
            mamba_block_last(x[0], *P)
        with pytest.raises(TypeError, match="x"):
            mamba_block_last(x.double(), *P)
        bad = list(P)
        bad[5] = P[5][:-1]
        with pytest.raises(ValueError, match="x_proj_weight"):
            mamba_block_last(x, *bad)
        bad = list(P)
        bad[10] = P[10][:, :-1]
        with pytest.raises(ValueError, match="out_proj_weight"):
            mamba_block_last(x, *bad)
        with pytest.raises(ValueError, match="out"):
            mamba_block_last(x, *P, out=torch.empty(4, 15, device=device))
    with pytest.raises(RuntimeError, match="inference only"):
        mamba_block_last(x.requires_grad_(), *P)


def test_multi_temporal_mamba_fused_equals_unfused(device):
    """The model's temporal encoder: fused (maps read in place, pooled on load, written into the fuse layer's
    input) vs every block unfused; both scales; and the block's own last_only fast path."""
    mtm, feats = make_encoder(device, fused=True)
    with torch.no_grad():
        assert mtm._fusable(feats)
        got = mtm(feats)
        for b in mtm.branches:
            b[0].fused = False
        assert not mtm._fusable(feats)
        want = mtm(feats)
    assert got.shape == want.shape == (2, 24, 3, 5)
    assert got.stride() == want.stride()
    assert rel_err(got, want) < 2e-5
    blk = mtm.branches[0][0]
    seq = torch.randn(6, 4, 24, device=device)
    with torch.no_grad():
        blk.fused = True
        a = blk(seq, last_only=True)
        blk.fused = False
        b = blk(seq, last_only=True)
    assert a.shape == b.shape == (6, 1, 24) and rel_err(a, b) < 2e-5


class _LastOnly(torch.nn.Module):
    def __init__(self, blk):
        super().__init__()
        self.blk = blk

    def forward(self, x):
        return self.blk(x, last_only=True)


def test_fused_path_not_taken_with_gradients_or_tracing(device):
    blk = make_block(16, device=device)
    blk.fused = True
    x = torch.randn(3, 4, 16, device=device)
    assert not blk.can_fuse(x)           # parameters require grad and grad mode is on
    with torch.no_grad():
        assert blk.can_fuse(x) == (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
        traced = torch.jit.trace(_LastOnly(blk), (x,), check_trace=False)
    assert "mamba_block_last" not in str(traced.graph)   # fvcore / ONNX see the unfused ops
    y = blk(x, last_only=True)           # the unfused path, differentiable
    y.sum().backward()
    assert blk.mixer.in_proj.weight.grad is not None


def test_fused_default(monkeypatch):
    """fused=None: on for CPU tensors (the interpreter, tested), off on CUDA until GPU-run; the env var decides."""
    from m2s2l.models.temporal import fused_default
    monkeypatch.delenv("M2S2L_FUSED_BLOCK", raising=False)
    assert fused_default(torch.device("cpu")) and not fused_default(torch.device("cuda"))
    monkeypatch.setenv("M2S2L_FUSED_BLOCK", "1")
    assert fused_default(torch.device("cuda"))
    monkeypatch.setenv("M2S2L_FUSED_BLOCK", "0")
    assert not fused_default(torch.device("cpu"))
    blk = make_block(16)
    x = torch.randn(3, 4, 16)
    with torch.no_grad():
        assert blk.fused is None and not blk.can_fuse(x)
        blk.fused = True
        assert blk.can_fuse(x) == (os.environ.get("TRITON_INTERPRET") == "1")


def test_custom_op_schema_and_fake(device):
    from m2s2l.ops.mamba_block import _fwd
    blk = make_block(16, d_state=8, device=device)
    m = blk.mixer
    x = torch.randn(1, 5, 4, 16, device=device)
    out = torch.zeros(1, 5, 16, device=device)
    args = (x, out, blk.norm.weight.detach(), blk.norm.bias.detach(), 1e-5, m.in_proj.weight.detach(),
            m.conv1d.weight[:, 0].detach().contiguous(), m.conv1d.bias.detach(), m.x_proj.weight.detach(),
            m.dt_proj.weight.detach(), m.dt_proj.bias.detach(), m.A_log.detach(), m.D.detach(),
            m.out_proj.weight.detach(), 2, torch.float32)
    torch.library.opcheck(_fwd, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.gpu
def test_gpu_bf16_and_fp32_paper_sizes():
    """The paper model's four levels' blocks (d_model 32 .. 256; d_inner 256, 512 in chunks) on CUDA: fp32 and bf16
    autocast vs float64."""
    dev = torch.device("cuda")
    for C in (32, 64, 128, 256):
        blk = make_block(C, device=dev)
        feats = torch.randn(2, 4, C, 9, 11, device=dev)
        x = feats.flatten(3).permute(0, 3, 1, 2)
        for pool in (1, 2):
            ref = mamba_block_last_ref(x.double(), *[p.double() for p in params(blk)], pool=pool)
            with torch.no_grad():
                got = mamba_block_last(x, *params(blk), pool=pool)
                assert rel_err(got, ref) < 2e-5
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    xb = x.to(torch.bfloat16)
                    gb = mamba_block_last(xb, *params(blk), pool=pool)
                refb = mamba_block_last_ref(xb.double(), *[p.double() for p in params(blk)], pool=pool)
                assert gb.dtype == torch.bfloat16 and rel_err(gb, refb) < 4e-2


def test_torch_compile_fullgraph_equals_eager(device):
    """The custom op (with its out= slice of the fuse layer's input) inside torch.compile(fullgraph=True)."""
    torch.manual_seed(0)
    mtm = MultiTemporalMamba(16, 4, (1, 2), 1, 8, 4, 2, "auto").to(device).eval()
    for b in mtm.branches:
        b[0].fused = True
    feats = torch.randn(2, 4, 16, 3, 5, device=device)
    with torch.no_grad():
        assert mtm._fusable(feats)
        want = mtm(feats)
        got = torch.compile(mtm, fullgraph=True)(feats)
    assert rel_err(got, want) < 1e-6
