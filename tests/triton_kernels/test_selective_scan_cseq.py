"""Chunk-parallel sequential scan ("cseq", ``scan_config.cseq_chunk``): forced on with small chunks, against the float64
reference (helpers and tolerances of test_selective_scan.py: relative RMS, float32 2e-5 / 5e-5, bfloat16 1.5e-2 /
3e-2) and against the whole-sequence kernels. Odd lengths put a partial chunk last; L < Lc runs one chunk.
"""
import pytest
import torch

from m2s2l.ops import selective_scan_fn
from m2s2l.triton_kernels.selective_scan import scan, scan_config
from m2s2l.triton_kernels.selective_scan.naive import selective_scan_ref

from test_selective_scan import _Spy, check, make_inputs, rel_rms, run, run_configs

KERNELS = ("_fwd_kernel", "_fwd_seq_kernel", "_bwd_kernel", "_bwd_seq_kernel", "_fwd_tile_kernel",
           "_bwd_tile_kernel", "_chunk_combine_kernel")


@pytest.fixture
def spies(monkeypatch):
    s = {n: _Spy(getattr(scan, n)) for n in KERNELS}
    for n, spy in s.items():
        monkeypatch.setattr(scan, n, spy)
    return s


# (batch, dim, L, N, bc, dtype, z, D, bias, h0, softplus, noncontig, extra M2S2L_SCAN_CFG); cseq=1 always
CASES = [
    (1, 6, 40, 4, "g2", "fp32", True, True, True, True, True, False, dict(cseq_chunk=16)),
    (1, 5, 7, 1, "fixed", "fp32", True, True, True, True, True, False, dict(cseq_chunk=8)),  # L < Lc: one chunk
    (1, 6, 65, 16, "g1", "fp32", True, True, True, True, True, False, dict(cseq_chunk=16)),  # last chunk 1 step
    (2, 10, 21, 4, "g1", "fp32", False, False, False, False, False, False, dict(cseq_chunk=8)),
    (2, 6, 19, 16, "mixed", "fp32", True, False, True, True, True, False, dict(cseq_chunk=4)),
    (2, 5, 17, 4, "3d", "fp32", True, True, False, False, True, True, dict(cseq_chunk=8)),
    (2, 6, 23, 4, "fixed", "fp32", False, True, True, True, False, True, dict(cseq_chunk=8)),
    (2, 8, 5, 4, "g2", "fp32", True, True, True, True, True, False, dict(cseq_chunk=1)),  # one step a chunk
    # the seq kernels (tile=0): 3 blocks a group (atomic dB/dC), persistent over 2 programs of (batch, chunk) rows,
    # 3 combine programs
    (1, 5, 13, 4, "g1", "fp32", True, True, True, True, True, False,
     dict(cseq_chunk=4, cseq_block_d=2, cseq_bwd_block_d=2, cseq_bwd_programs=2, cseq_combine_block_d=2, tile=0,
          tile_bwd=0)),
    (2, 6, 23, 4, "g2", "fp32", True, True, True, True, True, True, dict(cseq_chunk=8, tile=0, tile_bwd=0)),
    # the tiled kernels: 3 blocks a group (atomic dB/dC), one persistent program (forward) / one row stride
    # (backward), tiles of 2 / 4 steps (ragged: 5-step chunks)
    (1, 5, 13, 4, "g1", "fp32", True, True, True, True, True, False,
     dict(cseq_chunk=5, tile_block_d=2, tile_bwd_block_d=2, tile_progs_per_sm=0, tile_bwd_progs_per_sm=0,
          tile_steps=2, tile_bwd_steps=4)),
    (1, 6, 40, 4, "fixed", "fp32", True, True, True, True, True, False,
     dict(cseq_chunk=2, cseq_max_chunks=3)),  # Lc grown to 14: 3 chunks
    (1, 8, 25, 16, "g2", "bf16", True, True, True, True, True, False, dict(cseq_chunk=8)),
    (2, 4, 11, 4, "g1", "fp16", True, True, True, True, True, False, dict(cseq_chunk=4)),
]


def case_id(c):
    b, d, L, n, bc, dt, z, D, bias, h0, sp, nc, cfg = c
    flags = "".join(f for f, on in (("z", z), ("D", D), ("b", bias), ("h", h0), ("s", sp)) if on)
    extra = ",".join(f"{k.replace('cseq_', '')}={v}" for k, v in cfg.items())
    return f"B{b}-D{d}-L{L}-N{n}-{bc}-{dt}-{flags or 'plain'}{'-nc' if nc else ''}-{extra}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_cseq_against_reference(case, device, spies, monkeypatch):
    """out, last_state and every gradient (through last_state too) vs float64; the cseq launches ran."""
    b, d, L, n, bc, dt, z, D, bias, h0, sp, nc, cfg = case
    monkeypatch.setattr(scan_config, "_CFG", dict(cfg, cseq=1))
    check(make_inputs(b, d, L, n, bc, dt, z, D, bias, h0, device=device, noncontig=nc), dt, softplus=sp)
    chunks = -(-L // scan_config.cseq_chunk(L))
    two = 2 if chunks > 1 else 1
    tiled = cfg.get("tile", 1)  # cseq runs the tiled kernels unless tile=0
    fwd, bwd = ("_fwd_tile_kernel", "_bwd_tile_kernel") if tiled else ("_fwd_seq_kernel", "_bwd_seq_kernel")
    assert spies[fwd].launches == two and spies[bwd].launches == two
    assert spies["_fwd_tile_kernel"].launches + spies["_fwd_seq_kernel"].launches == two
    assert spies["_chunk_combine_kernel"].launches == (2 if chunks > 1 else 0)
    assert spies["_fwd_kernel"].launches == 0 and spies["_bwd_kernel"].launches == 0
    if tiled:  # the backward's scratch slots are 64-byte aligned (vector access to the state tiles)
        assert all(spies["_bwd_tile_kernel"].arg("slot", i) % 16 == 0 for i in range(two))


@pytest.mark.parametrize("other", [dict(seq=1), {}], ids=["whole-seq", "default"])
def test_cseq_equals_non_cseq(other, device, monkeypatch):
    """cseq (chunks of 8, partial last chunk) == the whole-sequence sequential kernels / the default (chunked
    associative scan) to float32 rounding, including the gradients."""
    ins = make_inputs(1, 6, 27, 4, "g2", device=device)
    gen = torch.Generator().manual_seed(7)
    dout, dlast = torch.randn(1, 6, 27, generator=gen).to(device), torch.randn(1, 6, 4, generator=gen).to(device)
    res = []
    for cfg in (dict(cseq=1, cseq_chunk=8), other):
        monkeypatch.setattr(scan_config, "_CFG", cfg)
        res.append(run(ins, True, "triton", dout, dlast))
    assert rel_rms(res[0][0], res[1][0]) < 1e-6 and rel_rms(res[0][1], res[1][1]) < 1e-6
    for k in res[0][2]:
        assert rel_rms(res[0][2][k], res[1][2][k]) < 1e-5, k


def test_cseq_without_last_state(device, monkeypatch):
    """No last_state (the backward gets no dlast; the last chunk's end adjoint is zero) and a forward-only call
    (no saved states)."""
    monkeypatch.setattr(scan_config, "_CFG", dict(cseq=1, cseq_chunk=8))
    ins = make_inputs(1, 6, 18, 4, "g2", device=device)
    dout = torch.randn(1, 6, 18, generator=torch.Generator().manual_seed(8)).to(device)
    names = [k for k, v in ins.items() if v is not None]
    grads = []
    for fn, f64 in ((selective_scan_fn, False), (selective_scan_ref, True)):
        xs = {k: (v.detach().double() if f64 else v.detach().clone()).requires_grad_() if v is not None else None
              for k, v in ins.items()}
        kw = dict(backend="triton") if not f64 else {}
        out = fn(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], xs["D"], xs["z"], xs["delta_bias"], True,
                 initial_state=xs["initial_state"], **kw)
        grads.append((out, torch.autograd.grad((out * dout.to(out.dtype)).sum(), [xs[k] for k in names])))
    assert rel_rms(grads[0][0], grads[1][0]) < 2e-5
    for k, g, r in zip(names, grads[0][1], grads[1][1]):
        assert rel_rms(g, r) < 5e-5, k
    with torch.no_grad():
        out = selective_scan_fn(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], backend="triton")
    ref = selective_scan_ref(ins["u"].double(), ins["delta"].double(), ins["A"], ins["B"].double(), ins["C"].double())
    assert rel_rms(out, ref) < 2e-5


def test_cseq_opcheck(device, monkeypatch):
    """The fake implementation knows the cseq chunk_states shape (saved_state_count)."""
    monkeypatch.setattr(scan_config, "_CFG", dict(cseq=1, cseq_chunk=8))
    ins = make_inputs(1, 4, 20, 3, "g2", device=device)
    assert scan_config.saved_state_count(20, 3) == 2
    args = tuple(v.requires_grad_() for v in ins.values()) + (True, True, True, False, "triton")
    torch.library.opcheck(torch.ops.m2s2l.selective_scan_fwd.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("batch", [2, 1])
def test_cseq_by_rows(batch, device, spies, monkeypatch):
    """The rows rule (batch * dim sequences) reaches both launchers and the fake: with cseq_min_rows 12, batch 2 x
    dim 6 runs cseq (3 chunks of 16: combine launched forward and backward), batch 1 the chunked kernels; outputs,
    last_state and every gradient vs float64 either way, and opcheck's fake chunk_states shape agrees."""
    monkeypatch.setattr(scan_config, "_CFG", dict(cseq_min_rows=12, cseq_rows_min_len=20, cseq_chunk=16))
    ins = make_inputs(batch, 6, 40, 4, "g2", device=device)
    check(ins, "fp32")
    on = batch * 6 >= 12
    assert spies["_chunk_combine_kernel"].launches == (2 if on else 0)
    assert (spies["_fwd_kernel"].launches == 0) == on
    args = tuple(v.detach().clone().requires_grad_() for v in ins.values()) + (True, True, True, False, "triton")
    torch.library.opcheck(torch.ops.m2s2l.selective_scan_fwd.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_cseq_config(monkeypatch):
    """On from seqlen 512 with chunks of 32 (the H200 measurements in cseq_chunk's docstring); cseq_min_len;
    cseq=0|1; the chunk grows to keep at most cseq_max_chunks chunks; the tiled kernels where cseq runs."""
    monkeypatch.setattr(scan_config, "_CFG", {})
    assert scan_config.cseq_chunk(511) == 0 and scan_config.saved_state_count(511, 16) == -(-511 // 16) - 1
    assert scan_config.cseq_chunk(512) == 32 and scan_config.saved_state_count(4096, 16) == 4096 // 32 - 1
    assert scan_config.use_tile_fwd(True) and not scan_config.use_tile_fwd(False)
    assert scan_config.use_tile_bwd(4096, True) and scan_config.use_tile_bwd(16, False)
    assert not scan_config.use_tile_bwd(15, False)
    # from 256 steps when there are >= 8192 sequences (batch * dim): the model's 32-stream spatial scans
    assert scan_config.cseq_chunk(256, 8192) == 32 and scan_config.saved_state_count(256, 16, 32 * 1024) == 7
    assert scan_config.cseq_chunk(256, 8191) == 0 and scan_config.cseq_chunk(255, 8192) == 0
    assert scan_config.cseq_chunk(256) == 0 and scan_config.saved_state_count(256, 16, 1024) == -(-256 // 16) - 1
    monkeypatch.setattr(scan_config, "_CFG", dict(cseq_min_rows=16, cseq_rows_min_len=20))
    assert scan_config.cseq_chunk(20, 16) == 32 and scan_config.cseq_chunk(19, 16) == 0
    monkeypatch.setattr(scan_config, "_CFG", dict(cseq_min_len=2048, cseq_chunk=128))
    assert scan_config.cseq_chunk(2047) == 0 and scan_config.cseq_chunk(2048) == 128
    monkeypatch.setattr(scan_config, "_CFG", dict(cseq=1, cseq_chunk=128))
    assert scan_config.cseq_chunk(7) == 128 and scan_config.saved_state_count(7, 16) == 0
    assert scan_config.cseq_chunk(2 ** 20 + 5) == 1025 and -(-(2 ** 20 + 5) // 1025) <= 1024
    monkeypatch.setattr(scan_config, "_CFG", dict(cseq=0, cseq_min_len=1))
    assert scan_config.cseq_chunk(4096) == 0
    # the persistent cseq backward: 16 programs per SM, its scratch capped at 256 MiB (long chunks of long sequences)
    sms = scan_config._num_sms(torch.device("cpu"))
    slot32 = 31 * 32 * 16 * 4          # a 32-step chunk, 32 x 16 tile
    assert scan_config._seq_bwd_rows(10 ** 6, 64, slot32, 1, torch.device("cpu"), "cseq_bwd") == 16 * sms // 64
    slot_long = 1024 * 32 * 16 * 4    # a 1025-step chunk
    rows = scan_config._seq_bwd_rows(10 ** 6, 64, slot_long, 1, torch.device("cpu"), "cseq_bwd")
    assert rows * 64 * slot_long <= max(256 << 20, sms * slot_long)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(2, 256, 4096), (1, 2048, 2 ** 15 + 3)], ids=lambda s: "x".join(map(str, s)))
def test_gpu_cseq_matches_default(shape, monkeypatch):
    """cseq with the tiled kernels (the default on these lengths) == the chunked-scan kernels (cseq=0) and == cseq
    with the sequential kernels (tile=0, tile_bwd=0) on long bf16 sequences, forward and gradients."""
    res = run_configs(shape, (dict(cseq=0), {}, dict(tile=0, tile_bwd=0)), monkeypatch)
    for other in (res[1], res[2]):
        assert rel_rms(other[0].float(), res[0][0].float()) < 1e-2 and rel_rms(other[1], res[0][1]) < 1e-3
        for k in res[0][2]:
            assert rel_rms(other[2][k].float(), res[0][2][k].float()) < 3e-2, k
