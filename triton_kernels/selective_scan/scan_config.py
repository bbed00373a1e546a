"""Launch configuration of the selective scan: which kernels run (chunked, sequential-in-time, chunk-parallel
sequential "cseq") and their tile sizes, warps and grids, with the measurements behind each default.

Every choice can be overridden for tuning sweeps through ``M2S2L_SCAN_CFG`` (read once at import into ``_CFG``;
``bench/tune_scan.py`` and the tests replace its contents in place). ``scan.py`` holds the launchers.
"""
import functools
import os

import torch
import triton

from .._config import env_int_config

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _env_config():
    """Optional overrides for tuning sweeps, e.g.
    M2S2L_SCAN_CFG="chunk=16,fwd_block_d=16,bwd_block_d=8,fwd_warps=4,bwd_warps=4" (chunk is capped by the sequence
    length; block sizes must be powers of two); the sequential forward: seq=0|1 (both directions), seq_max_len,
    seq_block_d, seq_warps; the sequential backward: seq_bwd=0|1
    (overrides seq for the backward only),
    seq_bwd_block_d, seq_bwd_warps, seq_bwd_progs_per_sm, seq_bwd_programs (total program target), seq_bwd_maxnreg
    (register cap passed to the compiler; unset = none: sm_90 AOT shows 255 registers unconstrained); the
    chunk-parallel sequential scan (``cseq_chunk``): cseq=0|1, cseq_min_len, cseq_min_rows, cseq_rows_min_len, cseq_chunk,
    cseq_max_chunks,
    cseq_block_d, cseq_warps, cseq_bwd_block_d, cseq_bwd_warps, cseq_bwd_programs, cseq_combine_block_d; the
    time-tiled kernels (``use_tile_fwd`` / ``use_tile_bwd``): tile=0|1, tile_steps, tile_block_d, tile_warps,
    tile_progs_per_sm, tile_maxnreg (forward); fast_sp=0|1
    (``use_fast_softplus``); short_last=0|1, short_last_max_len (``use_short_last``); tile_bwd=0|1,
    tile_bwd_min_len, tile_bwd_steps, tile_bwd_block_d,
    tile_bwd_warps, tile_bwd_progs_per_sm, tile_bwd_maxnreg (backward); peel=0|1 (the sequential forward's first step
    from a zero state without its decay exponentials; default: last-only scans, ``use_peel``); last_rows
    (``last_rows``), last_warps (``last_warps``)."""
    return env_int_config("M2S2L_SCAN_CFG")


_CFG = _env_config()


def _pow2(x):
    return triton.next_power_of_2(max(int(x), 1))


def chunk_len(seqlen, dstate):
    """Chunk length T_C shared by the forward (where it saves states) and the backward."""
    bn = max(2, _pow2(dstate))
    tc = _CFG.get("chunk") or (16 if bn <= 16 else (8 if bn <= 64 else 4))
    return max(2, min(tc, _pow2(seqlen)))


def cseq_chunk(seqlen, rows=None):
    """Chunk length Lc of the chunk-parallel sequential scan ("cseq") for this seqlen, or 0 when it is not used.

    cseq splits time into chunks of Lc steps and runs the sequential kernels on every (batch row, chunk, channel
    block) at once: the forward in two passes (chunk end states from zero, then the outputs from the combined
    chunk start states), the backward likewise (chunk start adjoints from zero, then the full backward per chunk);
    the diagonal A makes a chunk's effect on the state h_end = exp(A * sum(delta)) h_start + h_local. Both
    directions use it for the same lengths, so the backward gets the forward's chunk-boundary states.
    On by default for seqlen >= 512 (cseq_min_len; 1024 until the tiled kernels of scan_tile_kernels.py, which run
    under it; H200, bf16, bench/scan_ab.py fwd+bwd, cseq vs the chunked kernels (cseq=0), same run: (64, 192, 128)
    0.877 vs 0.653 ms (chunked wins), (64, 192, 256) 1.019 vs 1.242 (another run: 1.210 vs 1.242), (32, 256, 512)
    0.946 vs 1.624, (16, 384, 1024) 1.089 vs 2.423. 256 is left to the chunked kernels: the gain there was 3-22%
    over two runs, and the forward alone at 256 steps -- the M2S2L model's coarsest spatial scans, i.e. its inference
    speed -- was not measured) with Lc = 32 (cseq_chunk). Before the tiled kernels: NVIDIA H200, bench/tune_scan.py
    --cseq, bf16, N 16, same run: (16, 192, 4096) fwd 1.055 -> 0.641 ms, fwd+bwd 6.50 -> 2.92 ms; (8, 2048, 2048)
    fwd 3.155 -> 1.510, fwd+bwd 12.68 -> 7.45 ms (Lc 32 was the best fwd+bwd chunk on both; forward alone prefers
    256-512, but the backward needs the forward's chunking; with the tiled kernels, LM fwd+bwd at Lc 32 / 64 / 128:
    5.02 / 5.08 / 5.04 ms). Also on from seqlen 256 (cseq_rows_min_len) when there are ``rows`` = batch * dim >=
    8192 (cseq_min_rows) sequences: NVIDIA H100, bf16, bench/scan_ab.py, same run (session 16): (32, 1024, 256) --
    the M2S2L paper model's spatial BiMamba scan at 32 streams -- fwd 0.786 -> 0.236 ms, fwd+bwd 3.015 -> 1.017;
    (16, 1024, 256) fwd+bwd 1.511 -> 0.539; but (1, 1024, 256) fwd 0.034 -> 0.168 (one stream: too few sequences to
    fill the chunks' programs), so few rows keep the chunked kernels. M2S2L_SCAN_CFG cseq=1 forces it on for every
    length, cseq=0 off, cseq_min_len=M sets the threshold (cseq_min_rows / cseq_rows_min_len the second one). Without
    ``rows`` only the length rule applies. Lc is grown so that there are at most cseq_max_chunks (default 1024) chunks (saved states and the
    combine's serial steps stay bounded)."""
    on = _CFG.get("cseq")
    if on is None:
        on = seqlen >= _CFG.get("cseq_min_len", 512) or (
            rows is not None and rows >= _CFG.get("cseq_min_rows", 8192) and seqlen >= _CFG.get("cseq_rows_min_len",
                                                                                                 256))
    if not on:
        return 0
    lc = max(1, _CFG.get("cseq_chunk", 32))
    return max(lc, triton.cdiv(seqlen, max(1, _CFG.get("cseq_max_chunks", 1024))))


def saved_state_count(seqlen, dstate, rows=None):
    """The number of chunk states ``selective_scan_fwd(..., save_states=True)`` returns per (batch row, channel)
    (the chunk_states shape is (batch, count, dim, dstate); count 0 means None)."""
    lc = cseq_chunk(seqlen, rows)
    return triton.cdiv(seqlen, lc or chunk_len(seqlen, dstate)) - 1


@functools.lru_cache(maxsize=None)
def _num_sms(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def _fill(bd, cpg, rows, device, min_bd):
    """Halve the channel block while the grid has fewer than 4 programs per SM (e.g. (16, 192, 4096): 192
    programs of 16 channels left an H200 (132 SMs, 2-3 resident programs each) under half busy)."""
    while bd > min_bd and rows * triton.cdiv(cpg, bd) < 4 * _num_sms(device):
        bd //= 2
    return bd


def _block_d(cpg, seqlen, dstate, budget, key, rows, device):
    if key in _CFG:
        return _CFG[key]
    if _INTERPRET:  # CPU tests: numpy cost is per op, not per element, so take whole groups
        return max(2, min(_pow2(cpg), 256))
    tile = chunk_len(seqlen, dstate) * max(2, _pow2(dstate))
    return _fill(max(2, min(_pow2(cpg), max(budget // tile, 1), 64)), cpg, rows, device, 4)


def use_seq_fwd(seqlen):
    """Whether the forward runs the sequential-in-time kernel (short sequences; the chunked scan's per-chunk
    shared-memory/shuffle traffic dominates there). Override: M2S2L_SCAN_CFG seq=0|1 or seq_max_len=..."""
    if "seq" in _CFG:
        return bool(_CFG["seq"])
    return seqlen <= _CFG.get("seq_max_len", 32)


def _seq_block_d(cpg, dstate, rows, device, key="seq_block_d"):
    if key in _CFG:
        return _CFG[key]
    if _INTERPRET:
        return max(2, min(_pow2(cpg), 256))
    return _fill(max(2, min(_pow2(cpg), max(2048 // max(2, _pow2(dstate)), 1), 64)), cpg, rows, device, 16)


def _seq_warps(block_d, dstate):
    """2 warps for tiles up to 64 x 16 (measured on an H200 with tune_scan.py: (16384, 128, 8) 0.188 ms vs 0.340
    ms at 4 warps, (4096, 256, 16) 0.218 vs 0.323); larger tiles keep 4 (not measured)."""
    return 2 if block_d * max(2, _pow2(dstate)) <= 1024 else 4


def use_seq_bwd(seqlen):
    """Whether the backward runs the sequential-in-time kernel: as the forward (``use_seq_fwd``) unless
    M2S2L_SCAN_CFG seq_bwd=0|1 says otherwise."""
    if "seq_bwd" in _CFG:
        return bool(_CFG["seq_bwd"])
    return use_seq_fwd(seqlen)


def _seq_bwd_block_d(cpg, dstate, key="seq_bwd_block_d"):
    """A whole group's channels when that tile has at most 2048 state values (128 x 16 at dstate 16): dB/dC then
    need no atomics. Else tiles of 512 values (32 x 16), one warp. H200 sweep (bench/tune_scan.py --modes bwd,
    bf16): (16384, 128, 8) 1.12 ms at 128 x 16 vs 1.46 at 32 x 16; (262144, 64, 4) 4.46 vs 5.93; (65536, 128, 4)
    2.27 vs 2.90; where the group is wider than 128 channels 32 x 16 was best ((16384, 256, 4) 1.46 vs 1.65 at
    128; (4096, 256, 16) 1.56 vs 1.73)."""
    if key in _CFG:
        return _CFG[key]
    if _INTERPRET:
        return max(2, min(_pow2(cpg), 256))
    n2 = max(2, _pow2(dstate))
    if _pow2(cpg) * n2 <= 2048:
        return max(2, _pow2(cpg))
    return max(2, min(_pow2(cpg), max(512 // n2, 1), 64))


def _seq_bwd_warps(block_d, dstate, key="seq_bwd_warps"):
    return _CFG.get(key, max(1, min(8, block_d * max(2, _pow2(dstate)) // 512)))


def _seq_bwd_rows(batch, n_gd, slot_bytes, warps, device, prefix="seq_bwd"):
    """Batch-row stride of the persistent backward; programs = rows x n_gd. Target: seq_bwd_programs, else
    seq_bwd_progs_per_sm x SMs, else 8 warps per SM (what fits at the 255 registers the sm_90 AOT compile shows, so
    one wave) with the scratch capped at 32 MiB (to stay in L2)."""
    sms = _num_sms(device)
    if prefix + "_programs" in _CFG:
        target = _CFG[prefix + "_programs"]
    elif prefix + "_progs_per_sm" in _CFG:
        target = _CFG[prefix + "_progs_per_sm"] * sms
    elif prefix == "cseq_bwd":
        # H200, tune_scan --cseq: 16 programs per SM (LM fwd+bwd at 32-step chunks 7.45 ms vs 9.09 ms with the 32 MiB
        # cap below; 134 MB of scratch there); capped at 256 MiB of scratch, which binds only for longer chunks
        # (seqlen > 32768 grows the chunk: 2^20 steps -> 1025-step chunks) or dstate > 32
        target = min(16 * sms, max(sms, (256 << 20) // max(slot_bytes, 1)))
    else:
        target = min(max(1, 8 // warps) * sms, max(sms, (32 << 20) // max(slot_bytes, 1)))
    return max(1, min(batch, target // n_gd))


def use_peel(last_only):
    """Whether ``_fwd_seq_kernel`` peels its first step from a zero start state (no decay exponentials there): by
    default for last-only scans alone (``_fwd_last_kernel`` too). NVIDIA H100, bf16, ``bench/gpu_scan_cfg.sh $OUT
    peel=0 default`` (then bench/gpu_peel.sh; bench/scan_ab.py, same run, in ``_fwd_seq_kernel``): last-only
    (524288, 64, 4) 1.335 -> 1.144 ms, (524288, 64, 2) 0.986 -> 0.802, (131072, 128, 4) 0.687 -> 0.619; every step
    written it lost ((16384, 128, 8) 0.195 -> 0.204 ms, (4096, 256, 16) 0.222 -> 0.227). Override: peel=0|1."""
    return bool(_CFG.get("peel", last_only))


def use_short_last(seqlen):
    """Whether a last-only forward of whole sequences of ``seqlen`` steps runs ``_fwd_last_kernel`` (every input of
    a row loaded at once, the steps unrolled; compiled per length) instead of ``_fwd_seq_kernel`` with LAST_ONLY: up
    to 4 steps (the kernel's limit; ``short_last_max_len`` lowers it). NVIDIA H100, bf16, the video model's scans,
    ``bash bench/gpu_scan_cfg.sh $OUT short_last=0,fast_sp=0 short_last=0 default`` (bench/scan_ab.py, same run,
    both with the fast softplus): (524288, 64, 4) 1.041 -> 0.664 ms, (524288, 64, 2) 0.753 -> 0.436, (131072, 128, 4)
    0.557 -> 0.368, (131072, 128, 2) 0.403 -> 0.247, (32768, 256, 4) 0.284 -> 0.189; m2s2l_paper 32 streams 2940 ->
    3379 frames/s with both. Override: M2S2L_SCAN_CFG short_last=0|1, short_last_max_len=..."""
    return bool(_CFG.get("short_last", 1)) and seqlen <= min(4, _CFG.get("short_last_max_len", 4))


def use_fast_softplus(delta):
    """Whether the sequential forward computes delta's softplus with the hardware's approximate exp2 / log2
    (``scan_common._softplus``, FAST): for half-precision delta on an NVIDIA GPU (not under Triton's interpreter,
    which cannot run PTX). The sequential kernels take it (forward and backward, with the sigmoids of z and of the
    softplus derivative: ``scan_common._sigmoid``). NVIDIA H100, bf16, same run (bench/gpu_scan_cfg.sh): the video
    model's last-only scans 1.06-1.11x ((524288, 64, 4) 1.144 -> 1.041 ms), (16384, 128, 8) fwd 0.193 -> 0.175,
    fwd+bwd 1.313 -> 1.192; (4096, 256, 16) 1.00-1.03x. Override: M2S2L_SCAN_CFG fast_sp=0."""
    return bool(_CFG.get("fast_sp", 1) and not _INTERPRET and delta.is_cuda and torch.version.hip is None
                and delta.dtype in (torch.float16, torch.bfloat16))


def use_tile_fwd(cseq):
    """Whether the sequential forward runs the time-tiled kernel of ``scan_tile_kernels.py`` instead of
    ``_fwd_seq_kernel``: by default where the chunk-parallel scan runs (``cseq``: the long sequences). NVIDIA H200,
    bf16, bench/scan_ab.py, same run: (8, 2048, 2048) fwd 1.517 -> 0.877 ms, (16, 192, 4096) 0.643 -> 0.388; on
    whole short sequences it lost ((16384, 128, 8) 0.194 -> 0.385 ms; (4096, 256, 16) 0.221 -> 0.228), so those keep
    ``_fwd_seq_kernel``. Override: M2S2L_SCAN_CFG tile=0|1."""
    return bool(_CFG.get("tile", cseq))


def use_tile_bwd(seqlen, cseq):
    """Whether the sequential backward runs the time-tiled kernel of ``scan_tile_bwd_kernels.py`` instead of
    ``_bwd_seq_kernel``: by default under cseq and for whole sequences of at least tile_bwd_min_len (16) steps.
    NVIDIA H200, bf16, bench/scan_ab.py fwd+bwd, same run: (8, 2048, 2048) 7.36 -> 4.44 ms, (16, 192, 4096)
    2.85 -> 1.81 (with the tiled forward), (4096, 256, 16) 1.78 -> 1.47 (another run: 1.775 -> 1.600);
    (16384, 128, 8) 1.29 -> 2.11 (lost: 8-step sequences keep ``_bwd_seq_kernel``; lengths 9 .. 15 were not
    measured). Override: tile_bwd=0|1."""
    if "tile_bwd" in _CFG:
        return bool(_CFG["tile_bwd"])
    return bool(cseq) or seqlen >= _CFG.get("tile_bwd_min_len", 16)


def _tile_block_d(cpg, key="tile_block_d"):
    """Channels a program of the tiled kernels: 32 (one warp); ``key`` overrides."""
    if key in _CFG:
        return _CFG[key]
    if _INTERPRET:
        return max(2, min(_pow2(cpg), 256))
    return max(2, min(_pow2(cpg), 32))


def _tile_warps(block_d, key="tile_warps"):
    return _CFG.get(key, max(1, min(8, block_d // 32)))


def _tile_steps(seqlen, key="tile_steps", default=16):
    """Steps staged a tile (TT), capped by the (chunk) length."""
    return max(2, min(_CFG.get(key, default), _pow2(seqlen)))


def _tile_programs(device, key="tile_progs_per_sm", default=16):
    """Persistent programs of a tiled kernel: ``key`` (programs per SM, default ``default``) x SMs; more than fit at
    once (the backward has 255 registers: 8 a SM) still helps (shorter work lists, less tail). 16 for both
    directions. H200, bench/scan_ab.py fwd+bwd, both counts 16 vs 32, same run: LM 4.458 vs 4.393 ms, spatial
    1.859 vs 1.877, (64, 192, 256) 0.913 vs 1.019, (32, 256, 512) 0.936 vs 0.946, (16, 384, 1024) 1.098 vs 1.089;
    earlier runs: LM fwd 0.877 at 16, 0.850 at 32, 1.157 at 8; LM fwd+bwd by the backward's count 4.72 at 8, 4.44
    at 16, 4.41-4.50 at 24, 4.43 at 32."""
    return _CFG.get(key, default) * _num_sms(device)


def last_warps(warps):
    """Warps of a ``_fwd_last_kernel`` program: M2S2L_SCAN_CFG last_warps=W, else ``warps`` (the sequential
    kernel's). One warp (fewer instructions a row on sm_90) measured 0.98-1.07x in isolation on an H100 (session
    20): not the default."""
    return int(_CFG.get("last_warps", warps))


def last_rows(seqlen):
    """Batch rows a ``_fwd_last_kernel`` program runs (unrolled), sharing its channel setup: M2S2L_SCAN_CFG
    last_rows=R for every length, else 4 for rows of <= 2 steps and 1 for longer ones. Measured (H100, bf16,
    session 20, `bench/scan_ab.py --last-only`): 4 rows a program at (524288, 64, 2) 0.440 -> 0.386 ms (1.14x), but
    0.95x at (524288, 64, 4) and 0.97x at (131072, 128, 4), where a program's unrolled rows hold more registers;
    this default vs R = 1: 32 streams of m2s2l_paper 3795 vs 3704 frames/s (docs/BENCHMARKS.md, session 20)."""
    if "last_rows" in _CFG:
        return max(1, int(_CFG["last_rows"]))
    return 4 if seqlen <= 2 else 1
