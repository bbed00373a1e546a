"""bench/ncu_hot.py's parsing of Nsight Compute's source page (no ncu needed): the "Kernel Name" line before the
header is skipped, instructions are ranked by their stall samples and kept in program order, opcodes are summed
without their predicates, and a page without the sampling column is refused by name."""
import pytest

from test_bench_speed import load_bench

PAGE = '''"Kernel Name","_bwd_tile_kernel",
"Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)","# Samples"
"0x10","      LDC R1, c[0x0][0x28]","1","1","1"
"0x20","      LDG.E.128 R24, desc[UR14][R46.64]","3","3","3"
"0x30","      PRMT R32, R24, 0x7610, R32","60","50","60"
"0x40","      @!P0  BRA 0x10","6","6","6"
"0x50","      FMUL R1, R2, R3","30","20","30"
'''


def test_hot_ranks_and_sums():
    n, tot, top, by_op = load_bench("ncu_hot").hot(PAGE, top=2)
    assert (n, tot) == (5, 100.0)
    assert [(round(s, 2), i, src.split()[0]) for s, i, src, _ in top] == [(0.6, 2, "PRMT"), (0.3, 4, "FMUL")]
    assert top[0][3] == "LDC R1, c[0x0][0x28] | LDG.E.128 R24, desc[UR14][R46.64]"  # the two before it
    assert dict(by_op) == {"PRMT": 0.6, "FMUL": 0.3, "BRA": 0.06, "LDG": 0.03, "LDC": 0.01}


def test_hot_refuses_a_page_without_samples():
    with pytest.raises(ValueError, match="stall-sampling"):
        load_bench("ncu_hot").hot('"Address","Source"\n"0x10","NOP"\n')
