"""Short-sequence backward with the states in registers (``_bwd_short_kernel``, opt-in: M2S2L_SCAN_CFG short_bwd=1),
forced on, against the float64 reference (helpers and tolerances of test_selective_scan.py: relative RMS, float32
2e-5 / 5e-5, float16 2e-3 / 5e-3, bfloat16 1.5e-2 / 3e-2; the loss includes last_state, so d last_state flows in;
torch.empty is NaN-poisoned by the conftest) and against the scratch kernel it replaces.
"""
import pytest
import torch

from m2s2l.triton_kernels.selective_scan import scan

from test_selective_scan import _Spy, check, make_inputs, rel_rms, run

KERNELS = ("_fwd_seq_kernel", "_bwd_kernel", "_bwd_seq_kernel", "_bwd_short_kernel")


@pytest.fixture
def spies(monkeypatch):
    s = {n: _Spy(getattr(scan, n)) for n in KERNELS}
    for n, spy in s.items():
        monkeypatch.setattr(scan, n, spy)
    return s


# (batch, dim, L, N, bc, dtype, z, D, bias, h0, softplus, noncontig, extra M2S2L_SCAN_CFG); short_bwd=1 always
CASES = [
    (2, 5, 1, 4, "g1", "fp32", True, True, True, True, True, False, {}),
    (2, 5, 1, 1, "fixed", "fp32", False, False, False, False, False, False, {}),
    (2, 24, 7, 4, "g2", "fp32", True, True, True, True, True, False, {}),
    (1, 24, 8, 16, "g4", "fp32", False, True, False, False, True, False, {}),
    (2, 130, 8, 4, "g2", "fp32", True, False, True, True, False, False, {}),
    (2, 5, 13, 16, "3d", "fp32", True, True, False, True, True, True, {}),
    (2, 24, 16, 1, "fixed", "fp32", True, True, True, False, True, True, {}),
    (2, 24, 13, 4, "mixed", "fp32", False, False, True, True, True, False, {}),
    (2, 24, 16, 16, "g2", "fp32", True, True, True, True, True, True, {}),
    (2, 24, 7, 16, "g1", "fp16", True, True, True, True, True, False, {}),
    (2, 24, 16, 16, "g2", "bf16", True, True, True, True, True, False, {}),
    (1, 130, 8, 4, "fixed", "bf16", True, True, True, True, True, False, {}),
    # 3 blocks a group (atomic dB/dC), persistent: 2 programs over 3 rows x 3 blocks
    (3, 5, 7, 4, "g1", "fp32", True, True, True, True, True, False, dict(short_bwd_block_d=2, short_bwd_programs=2)),
    (3, 12, 13, 16, "fixed", "fp32", True, True, True, True, True, True, dict(short_bwd_block_d=4, short_bwd_programs=5)),
    (2, 24, 8, 4, "g4", "bf16", True, True, True, True, True, False, dict(short_bwd_block_d=4)),
]


def case_id(c):
    b, d, L, n, bc, dt, z, D, bias, h0, sp, nc, cfg = c
    flags = "".join(f for f, on in (("z", z), ("D", D), ("b", bias), ("h", h0), ("s", sp)) if on)
    extra = ",".join(f"{k}={v}" for k, v in cfg.items())
    return f"B{b}-D{d}-L{L}-N{n}-{bc}-{dt}-{flags or 'plain'}{'-nc' if nc else ''}{'-' + extra if extra else ''}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_short_bwd_against_reference(case, device, spies, monkeypatch):
    b, d, L, n, bc, dt, z, D, bias, h0, sp, nc, cfg = case
    monkeypatch.setattr(scan, "_CFG", dict(cfg, short_bwd=1))
    ins = make_inputs(b, d, L, n, bc, dt, z, D, bias, h0, device=device, noncontig=nc)
    if nc:
        assert not ins["u"].is_contiguous() and not ins["delta"].is_contiguous()
    check(ins, dt, softplus=sp)
    assert spies["_bwd_short_kernel"].launches == 1
    assert spies["_bwd_seq_kernel"].launches == 0 and spies["_bwd_kernel"].launches == 0


def test_short_bwd_off_by_default_and_max_len(spies, monkeypatch):
    """Default: the scratch kernel; short_bwd=1 takes seqlen <= short_bwd_max_len, longer ones keep the scratch one."""
    for cfg, L, short in (({}, 8, 0), (dict(short_bwd=1), 8, 1), (dict(short_bwd=1, short_bwd_max_len=8), 9, 0)):
        monkeypatch.setattr(scan, "_CFG", cfg)
        before = spies["_bwd_short_kernel"].launches, spies["_bwd_seq_kernel"].launches
        ins = make_inputs(1, 4, L, 4, "g1")
        gen = torch.Generator().manual_seed(5)
        run(ins, True, "triton", torch.randn(1, 4, L, generator=gen), torch.randn(1, 4, 4, generator=gen))
        assert spies["_bwd_short_kernel"].launches - before[0] == short
        assert spies["_bwd_seq_kernel"].launches - before[1] == 1 - short


def test_short_bwd_equals_scratch_bwd(device, monkeypatch):
    """Same math as _bwd_seq_kernel: the gradients agree to float32 rounding (atomic blocks and persistence on)."""
    ins = make_inputs(3, 6, 9, 4, "g2", device=device)
    gen = torch.Generator().manual_seed(6)
    dout, dlast = torch.randn(3, 6, 9, generator=gen).to(device), torch.randn(3, 6, 4, generator=gen).to(device)
    res = []
    for cfg in (dict(short_bwd=0), dict(short_bwd=1, short_bwd_block_d=2, short_bwd_programs=4)):
        monkeypatch.setattr(scan, "_CFG", cfg)
        res.append(run(ins, True, "triton", dout, dlast))
    assert rel_rms(res[0][0], res[1][0]) == 0.0
    for k in res[0][2]:
        assert rel_rms(res[1][2][k], res[0][2][k]) < 2e-6, k


def test_short_bwd_gpu_tile_rule(monkeypatch):
    """The GPU launch rule (not the interpreter's): 4 warps, 32 x 16 tiles at dstate 16."""
    monkeypatch.setattr(scan, "_INTERPRET", False)
    monkeypatch.setattr(scan, "_CFG", {})
    assert scan._short_bwd_tile(128, 16, 8) == (32, 4)
    assert scan._short_bwd_tile(256, 16, 16) == (32, 4)
    assert scan._short_bwd_tile(64, 16, 4) == (32, 4)
    assert scan._short_bwd_tile(5, 4, 8) == (8, 4)
    monkeypatch.setattr(scan, "_CFG", dict(short_bwd_block_d=16, short_bwd_warps=2))
    assert scan._short_bwd_tile(128, 16, 8) == (16, 2)
