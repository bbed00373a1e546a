"""mamba_block_prep (a temporal Mamba block's last-step inference up to its selective scan, one kernel) against its
float64 reference, and MambaBlock.prep_last / MultiTemporalMamba's "prep" path against the unfused block.

Tolerance: max |a - ref| / max(1, max |ref|). fp32: exact float32 GEMM products (``input_precision="ieee"``), so
float32 accumulation only: 2e-5. bf16 autocast: the kernel rounds where the unfused block stores bf16 (the normed
input, in_proj's x, the conv output, the x_proj GEMM's outputs), a few bf16 ulps: 3e-2. Output buffers come from the
NaN-poisoned torch.empty (tests/conftest.py): an element the kernel forgot to write is non-finite.
"""
import os

import pytest
import torch

from m2s2l.models.temporal import MultiTemporalMamba, set_prep
from m2s2l.ops import mamba_block_prep
from m2s2l.triton_kernels.mamba_block.naive import mamba_block_prep_ref

from test_mamba_block import make_block, make_encoder, rel_err

INTERP = os.environ.get("TRITON_INTERPRET") == "1"


def prep_params(blk):
    m = blk.mixer
    return (blk.norm.weight.detach(), blk.norm.bias.detach(), m.in_proj.weight.detach(),
            m.conv1d.weight[:, 0].detach().contiguous(), m.conv1d.bias.detach(), m.folded_xdt_weight())


CASES = [  # rows, seqlen, pool, d_model, d_state, d_conv, expand, dt_rank
    (37, 4, 1, 24, 16, 4, 2, "auto"),    # d_inner 48 (not a power of two)
    (37, 4, 2, 24, 16, 4, 2, "auto"),
    (16, 8, 4, 32, 8, 3, 2, 3),          # d_state 8, d_conv 3
    (5, 1, 1, 16, 5, 2, 1, "auto"),      # one step, d_state 5 (2N = 10, padded), d_conv 2, fewer rows than a program
    (33, 6, 3, 20, 16, 1, 2, 16),        # d_conv 1, pool 3
    (17, 3, 1, 64, 16, 4, 2, "auto"),    # d_inner 128 (the widest the kernel takes)
]


@pytest.mark.parametrize("rows,T,pool,C,N,K,expand,rank", CASES)
def test_fp32_matches_float64_reference(rows, T, pool, C, N, K, expand, rank, device):
    blk = make_block(C, d_state=N, d_conv=K, expand=expand, dt_rank=rank, device=device)
    P = prep_params(blk)
    x = torch.randn(rows, T, C, device=device)
    with torch.no_grad():
        got = mamba_block_prep(x, *P, pool=pool, backend="triton")
        ref = mamba_block_prep_ref(x.double(), *[p.double() for p in P], pool=pool)
    di = blk.mixer.d_inner
    shapes = [(rows, T // pool, di), (rows, T // pool, di), (rows, T // pool, 2 * N), (rows, di), (rows, C)]
    for name, g, r, shp in zip(("u", "delta", "bc", "z", "x_last"), got, ref, shapes):
        assert g.shape == shp and g.dtype == torch.float32, name
        assert torch.isfinite(g).all() and rel_err(g, r) < 2e-5, (name, rel_err(g, r))


@pytest.mark.parametrize("pool", [1, 2])
def test_bf16_autocast_strided_maps(pool, device):
    """The streaming state's layout: (B, T, C, H, W) maps stored in (B, H, W, T, C) order, read as (B, H*W, T, C)
    without a copy, under bf16 autocast (outputs in bf16, x_last in x's dtype)."""
    C = 24
    blk = make_block(C, device=device)
    P = prep_params(blk)
    feats = torch.randn(2, 3, 5, 4, C, device=device).permute(0, 3, 4, 1, 2)       # (B, T, C, H, W) view
    x = feats.flatten(3).permute(0, 3, 1, 2)                                        # (B, H*W, T, C) view
    typ = device.type
    with torch.no_grad(), torch.autocast(typ, dtype=torch.bfloat16, enabled=typ == "cuda" or INTERP):
        got = mamba_block_prep(x, *P, pool=pool, backend="triton")
    ref = mamba_block_prep_ref(x.double(), *[p.double() for p in P], pool=pool)
    half = typ == "cuda" or INTERP
    for name, g, r in zip(("u", "delta", "bc", "z", "x_last"), got, ref):
        assert g.dtype == (torch.bfloat16 if half and name != "x_last" else torch.float32), name
        assert torch.isfinite(g.float()).all() and rel_err(g, r) < (3e-2 if half else 2e-5), (name, rel_err(g, r))


def test_prep_last_and_multi_temporal_mamba_equal_unfused(device):
    """MambaBlock.prep_last == the unfused block's last step (both scales' pooling), and MultiTemporalMamba with
    set_prep(True) takes the "prep" path and equals the unfused encoder."""
    mtm, feats = make_encoder(device, fused=False)
    with torch.no_grad():
        assert mtm._fusable(feats) is None
        want = mtm(feats)
        set_prep(mtm, True)
        assert mtm._fusable(feats) == ("prep" if device.type == "cuda" or INTERP else None)
        got = mtm(feats)
    assert got.shape == want.shape == (2, 24, 3, 5) and got.stride() == want.stride()
    assert rel_err(got, want) < 2e-5
    blk = mtm.branches[1][0]
    seq = torch.randn(6, 4, 24, device=device)
    with torch.no_grad():
        a = blk.prep_last(seq, pool=2)                                               # (6, 24)
        b = blk(seq.reshape(6, 2, 2, 24).mean(2), last_only=True)[:, 0]
        blk.mixer.fold_dt_proj()                                                     # the folded weight, as scoring
        c = blk.prep_last(seq, pool=2)
    assert a.shape == b.shape == (6, 24) and rel_err(a, b) < 2e-5 and rel_err(c, b) < 2e-5
    x = torch.randn(3, 4, 24, device=device)
    assert not blk.can_prep(x)                                                       # gradients: never


def test_torch_backend_and_fallback(device):
    blk = make_block(16, device=device)
    P = prep_params(blk)
    x = torch.randn(4, 4, 16, device=device)
    with torch.no_grad():
        for g, r in zip(mamba_block_prep(x, *P, backend="torch"), mamba_block_prep_ref(x, *P)):
            assert torch.equal(g, r)
    wide = make_block(80, device=device)                                             # d_inner 160 > 128
    Pw = prep_params(wide)
    xw = torch.randn(3, 4, 80, device=device)
    with torch.no_grad():
        got = mamba_block_prep(xw, *Pw)                                              # auto: the reference
        with pytest.raises(ValueError, match="d_inner <= 128"):
            mamba_block_prep(xw, *Pw, backend="triton")
    assert rel_err(got[0], mamba_block_prep_ref(xw, *Pw)[0]) == 0


def test_bad_inputs_name_the_argument(device):
    blk = make_block(16, device=device)
    P = list(prep_params(blk))
    x = torch.randn(4, 4, 16, device=device)
    with torch.no_grad():
        with pytest.raises(ValueError, match="pool"):
            mamba_block_prep(x, *P, pool=3)
        with pytest.raises(ValueError, match="in_proj_weight"):
            mamba_block_prep(x, P[0], P[1], P[2][:, :8], *P[3:])
        with pytest.raises(ValueError, match="xdt_weight"):
            mamba_block_prep(x, *P[:5], P[5][:, :7])
        with pytest.raises(ValueError, match="xdt_weight"):
            mamba_block_prep(x, *P[:5], P[5][:33])                                  # 2N odd
        with pytest.raises(ValueError, match="conv_weight"):
            mamba_block_prep(x, *P[:3], P[3][:5], *P[4:])
        with pytest.raises(TypeError, match="x must have dtype"):
            mamba_block_prep(x.long(), *P)
    with pytest.raises(RuntimeError, match="inference only"):
        mamba_block_prep(x.requires_grad_(), *P)


def test_custom_op_schema_and_fake(device):
    from m2s2l.ops.mamba_block import _prep
    blk = make_block(16, d_state=8, device=device)
    P = prep_params(blk)
    x = torch.randn(1, 5, 4, 16, device=device)
    outs = [torch.zeros(5, 2, 32, device=device), torch.zeros(5, 2, 32, device=device),
            torch.zeros(5, 2, 16, device=device), torch.zeros(5, 32, device=device), torch.zeros(5, 16, device=device)]
    args = (x, P[0], P[1], 1e-5, *P[2:], 2, torch.float32, *outs)
    torch.library.opcheck(_prep, args, test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph_equals_eager(device):
    """The "prep" path (custom op writing five outputs, the scan, out_proj) inside torch.compile(fullgraph=True)."""
    torch.manual_seed(0)
    mtm = MultiTemporalMamba(16, 4, (1, 2), 1, 8, 4, 2, "auto").to(device).eval()
    set_prep(mtm, True)
    for b in mtm.branches:
        b[0].fused = False
    feats = torch.randn(2, 4, 16, 3, 5, device=device)
    with torch.no_grad():
        if mtm._fusable(feats) != "prep":
            pytest.skip("needs the Triton backend (CUDA or TRITON_INTERPRET=1)")
        want = mtm(feats)
        got = torch.compile(mtm, fullgraph=True, backend="aot_eager" if device.type == "cpu" else "inductor")(feats)
    assert rel_err(got, want) < 1e-6


@pytest.mark.gpu
def test_gpu_paper_levels_bf16_and_fp32():
    """The paper model's levels 0 and 1 (d_model 32 / 64, d_inner 64 / 128) on CUDA: the op vs float64 (fp32 and bf16
    autocast), and the temporal encoder's "prep" path vs the unfused one under bf16 autocast."""
    dev = torch.device("cuda")
    for C in (32, 64):
        blk = make_block(C, device=dev)
        P = prep_params(blk)
        x = torch.randn(2, 4, C, 9, 11, device=dev).flatten(3).permute(0, 3, 1, 2)
        for pool in (1, 2):
            ref = mamba_block_prep_ref(x.double(), *[p.double() for p in P], pool=pool)
            with torch.no_grad():
                got = mamba_block_prep(x, *P, pool=pool)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    gb = mamba_block_prep(x.to(torch.bfloat16), *P, pool=pool)
            refb = mamba_block_prep_ref(x.to(torch.bfloat16).double(), *[p.double() for p in P], pool=pool)
            for g, r, h, rb in zip(got, ref, gb, refb):
                assert rel_err(g, r) < 2e-5 and rel_err(h, rb) < 3e-2
        mtm = MultiTemporalMamba(C, 4, (1, 2), 1, 16, 4, 2, "auto").to(dev).eval()
        feats = torch.randn(4, 4, C, 16, 16, device=dev)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            want = mtm(feats.to(torch.bfloat16))
            set_prep(mtm, True)
            assert mtm._fusable(feats) == "prep"
            got = mtm(feats.to(torch.bfloat16))
        assert rel_err(got, want) < 3e-2
