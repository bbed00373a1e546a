"""Triton causal depthwise conv1d: the launchers of the kernels in ``conv_kernels.py`` (no autograd here;
``m2s2l.ops.causal_conv1d_fn`` wraps them in a custom op).

Two paths, chosen by layout and length (``_use_long``):
- long path (unit time stride, seqlen >= ``long_min_len`` = 64): a program per (batch row, BLOCK_D channels,
  BLOCK_L steps), the time axis as rows of V steps (16 bytes: one aligned vector load per thread); the
  width-1 halo comes from the neighbouring rows and the shifted operands are rebuilt in registers, so every
  global load and store is an aligned vector access (when seqlen and the row strides are multiples of 16
  elements: Triton specialises on that).
- tile path (short sequences such as the video shape (16384, 128, 8), channel-last or strided time): every
  program covers a [BLOCK_B, BLOCK_C, BLOCK_T] tile of (batch, channel, time), long along the contiguous axis,
  and reads the halo with shifted loads (from x, from ``initial_states`` before t=0, or zeros).
Strides are passed for every tensor, so contiguous, sliced and channel-last (``x.stride(1) == 1``) inputs run
without a copy; Triton specialises stride==1.

Precision. Loads are cast to float32 and accumulated in float32; out/dx are stored in x's dtype.
weight/bias may have their own float dtype (e.g. float32 weights with bf16 x); dweight/dbias are
returned in the weight's/bias's dtype, d initial_states in the initial_states' dtype.

Backward. g = dout * act'(pre) is recomputed from x; the gradient of the padded input is
dxpad[s] = sum_j w[W-1-j] * g[s+j] (+ d final_states for the last W-1 inputs), written to dx for s >= 0 and
to d initial_states for s < 0. dweight/dbias are reduced deterministically: each program writes float32
partials (one row of a (rows, dim, width) buffer; the tile path first loops over ``b_iters`` batch blocks, the
long path over ``t_iters`` time tiles)
and torch sums the rows (no atomics, so results are bit-reproducible).

Launch parameters can be overridden with ``M2S2L_CONV_CFG="key=int,..."`` (read at import; see
``_env_config``); ``bench/tune_conv.py`` sweeps them.
"""
import functools
import os

import torch
import triton

from .._config import env_int_config
from .conv_kernels import _conv_bwd_kernel, _conv_bwd_long_kernel, _conv_fwd_kernel, _conv_fwd_long_kernel

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _env_config():
    """Integer overrides from ``M2S2L_CONV_CFG``, e.g. "fwd_block_l=512,fwd_block_d=4,fwd_warps=4".

    Long path: long=0|1 (force the path off/on, any layout), long_min_len (shortest seqlen on it, 64), vec (V,
    steps per thread-row; raised to width-1 if smaller), fwd_block_l / bwd_block_l (steps per program, powers
    of two), fwd_block_d / bwd_block_d (channels per program), fwd_warps / bwd_warps, bwd_t_iters (time tiles
    per backward program).
    Tile path: short_fwd_tile / short_bwd_tile (elements per program), short_fwd_warps / short_bwd_warps,
    short_block_t (longest time block), short_wt=0|1 (taps as a (width, dim) copy; default on for channel-last)."""
    return env_int_config("M2S2L_CONV_CFG")


_CFG = _env_config()


def _pow2(n):
    return triton.next_power_of_2(max(int(n), 1))


@functools.lru_cache(maxsize=None)
def _num_sms(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def _alloc_like(x):
    """Output with x's layout: channel-last in -> channel-last out, otherwise contiguous."""
    if x.stride(1) == 1 and x.stride(2) != 1 and x.shape[1] > 1:
        return torch.empty(x.shape[0], x.shape[2], x.shape[1], dtype=x.dtype, device=x.device).transpose(1, 2)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _strides(t, n=3):
    return tuple(t.stride()) if t is not None else (0,) * n


def _short_seq(L):
    """Below ``long_min_len`` (64) steps: the video regime (short-path tiles sized for it, never the long path)."""
    return L < _CFG.get("long_min_len", 64)


def _use_long(x):
    if "long" in _CFG:
        return bool(_CFG["long"])
    return (x.stride(2) == 1 or x.shape[2] == 1) and not _short_seq(x.shape[2])


def _long_blocks(x, width, mode):
    """(BLOCK_D, BLOCK_Q, V, num_warps, grid size, n_t, n_d) of the long-path kernels; mode "fwd" | "bwd"."""
    batch, dim, L = x.shape
    V = max(_CFG.get("vec") or max(1, 16 // x.element_size()), _pow2(width - 1))
    V = _pow2(V)
    if _INTERPRET:  # CPU tests: numpy cost is per op, not per element, so take big tiles
        bl_def, bd_def = 256, 16
    else:  # fwd: 1024 x 2 tiles on 2 warps; bwd: 1024 x 1 on 4 warps (H200 sweep, bench/tune_conv.py: long fwd
        # 0.0756 ms vs 0.0820 at 4 warps; fwd+bwd 0.2446 vs 0.2468 with 512 x 2; xlong fwd+bwd 0.430 vs 0.463)
        bl_def, bd_def = (1024, 2) if mode == "fwd" else (1024, 1)
    bl = _CFG.get(f"{mode}_block_l") or bl_def
    bl = _pow2(max(V, min(bl, _pow2(L))))
    bd = _CFG.get(f"{mode}_block_d") or max(1, bl_def * bd_def // bl)  # short sequences: more channels
    bd = _pow2(min(bd, _pow2(dim)))
    warps = _CFG.get(f"{mode}_warps") or (2 if mode == "fwd" else 4)

    def n_prog():
        return batch * triton.cdiv(dim, bd) * triton.cdiv(L, bl)
    if not _INTERPRET and x.device.type == "cuda":  # fill the card: >= 4 programs per SM unless set explicitly
        while f"{mode}_block_d" not in _CFG and bd > 1 and n_prog() < 4 * _num_sms(x.device):
            bd //= 2
        while f"{mode}_block_l" not in _CFG and bl > max(V, 128) and n_prog() < 4 * _num_sms(x.device):
            bl //= 2
    n_t, n_d = triton.cdiv(L, bl), triton.cdiv(dim, bd)
    return bd, bl // V, V, warps, batch * n_d * n_t, n_t, n_d


def _chan_last(x):
    return x.stride(1) == 1 and x.stride(2) != 1


def _tile_weight(x, weight):
    """(weight, (stride channel, stride tap)) for the tile kernels. Channel-last x: a (width, dim) copy, so the
    taps of a thread's consecutive channels are one vector load instead of a scalar load per channel and tap
    (16 L1 wavefronts per warp each: they outweighed the x loads 30:1). Override: short_wt=0|1."""
    if _CFG.get("short_wt", int(_chan_last(x))):
        wt = weight.t().contiguous()
        return wt, (wt.stride(1), wt.stride(0))
    return weight, tuple(weight.stride())


def _bwd_t_iters(x, n_prog, n_t):
    """Time tiles per backward program (each program reduces its dweight/dbias partials across threads once):
    as many as keep >= 16 programs per SM on a GPU; all of a row under the interpreter. Override: bwd_t_iters."""
    if "bwd_t_iters" in _CFG:
        return max(1, min(_CFG["bwd_t_iters"], n_t))
    if _INTERPRET or x.device.type != "cuda":
        return n_t
    return max(1, min(n_t, n_prog // (16 * _num_sms(x.device))))


def _tiles(x, tile):
    """[BLOCK_B, BLOCK_C, BLOCK_T] with about ``tile`` elements, long along the contiguous axis (BLOCK_T at most
    16 for channel-last x, else 128; override: short_block_t)."""
    batch, dim, L = x.shape
    bt = min(triton.next_power_of_2(L), _CFG.get("short_block_t", 16 if _chan_last(x) else 128))
    def floor2(v):  # block sizes must be powers of two; ``tile`` need not be (e.g. 1024 // width)
        return 1 << (max(1, int(v)).bit_length() - 1)
    bc = min(triton.next_power_of_2(dim), floor2(tile // bt), 256)
    bb = min(triton.next_power_of_2(batch), floor2(tile // (bt * bc)))
    return bb, bc, bt


def causal_conv1d_fwd(x, weight, bias=None, initial_states=None, activation=None, return_final_states=False):
    """Launch the forward kernel. Returns (out, final_states or None); out has x's layout and dtype."""
    batch, dim, L = x.shape
    width = weight.shape[1]
    out = _alloc_like(x)
    final = None
    if return_final_states:
        final = torch.empty(batch, dim, width - 1, dtype=x.dtype, device=x.device)
    flags = dict(W=width, HAS_BIAS=bias is not None, HAS_INIT=initial_states is not None,
                 STORE_FINAL=return_final_states and width > 1, SILU=activation in ("silu", "swish"))
    long = _use_long(x)
    wk, w_strides = (weight, tuple(weight.stride())) if long else _tile_weight(x, weight)
    args = (x, wk, bias, initial_states, out, final)
    strides = (*x.stride(), *w_strides, *_strides(initial_states), *out.stride(), *_strides(final))
    if long:
        bd, bq, V, warps, n, n_t, n_d = _long_blocks(x, width, "fwd")
        _conv_fwd_long_kernel[(n,)](*args, dim, L, n_t, n_d, *strides, WPAD=_pow2(width), **flags,
                                    BLOCK_D=bd, BLOCK_Q=bq, V=V, num_warps=warps)
        return out, final
    short = _short_seq(L)  # video regime: smaller tiles (H200 sweep: (262144, 64, 4) 0.163 ms
    # at 512 elements / 2 warps vs 0.408 at 2048 / 8; (16384, 128, 8) 0.057 vs 0.064)
    bb, bc, bt = _tiles(x, _CFG.get("short_fwd_tile", 512 if short else 2048))
    grid = (triton.cdiv(batch, bb), triton.cdiv(dim, bc), triton.cdiv(L, bt))
    _conv_fwd_kernel[grid](*args, batch, dim, L, *strides, **flags, BLOCK_B=bb, BLOCK_C=bc, BLOCK_T=bt,
                           num_warps=_CFG.get("short_fwd_warps", 2 if short else 8))
    return out, final


def _target_programs(device):
    """Backward programs to aim for: ~32 per SM on a GPU (enough in flight to hide load latency); 1 on CPU
    (TRITON_INTERPRET=1), so small tests exercise the in-program batch loop."""
    if device.type == "cuda":
        return 32 * _num_sms(device)
    return 1


def causal_conv1d_bwd(x, weight, bias, initial_states, dout, dfinal_states=None, activation=None,
                      need_dinit=True):
    """Launch the backward kernel. Returns (dx, dweight, dbias or None, dinitial_states or None)."""
    batch, dim, L = x.shape
    width = weight.shape[1]
    dx = _alloc_like(x)
    store_dinit = initial_states is not None and need_dinit and width > 1
    dinit = torch.empty_like(initial_states) if store_dinit else None
    if width == 1:
        dfinal_states = None
    flags = dict(W=width, WPAD=_pow2(width), HAS_BIAS=bias is not None, HAS_INIT=initial_states is not None,
                 SILU=activation in ("silu", "swish"), HAS_DFINAL=dfinal_states is not None, STORE_DINIT=store_dinit)
    long = _use_long(x)
    wk, w_strides = (weight, tuple(weight.stride())) if long else _tile_weight(x, weight)
    strides = (*x.stride(), *w_strides, *_strides(initial_states), *dout.stride(), *_strides(dfinal_states),
               *dx.stride(), *_strides(dinit))
    if long:
        bd, bq, V, warps, n, n_t, n_d = _long_blocks(x, width, "bwd")
        t_iters = _bwd_t_iters(x, n, n_t)
        n_t = triton.cdiv(n_t, t_iters)  # groups of t_iters time tiles, one program each
        n, rows = batch * n_d * n_t, batch * n_t
    else:
        # The SiLU backward recomputes pre-activations at W shifts (W*W shifted loads): smaller tiles keep
        # the per-thread pointers in registers (sm_90: W=4 -> 512-element tiles, ~237 registers, no spills).
        # Short sequences: half that (H200 sweep, W=4: 256-element tiles, fwd+bwd (262144, 64, 4) 1.02 ms vs 1.28).
        tile = max(128, (1024 if _short_seq(L) else 2048) // width)
        bb, bc, bt = _tiles(x, _CFG.get("short_bwd_tile", tile))
        n_b, n_c, n_t = triton.cdiv(batch, bb), triton.cdiv(dim, bc), triton.cdiv(L, bt)
        # Loop over batch blocks inside a program (fewer dweight partial rows) down to the target program count.
        b_iters = max(1, min(n_b, (n_b * n_c * n_t) // _target_programs(x.device)))
        n_bp = triton.cdiv(n_b, b_iters)
        rows = n_bp * n_t
    dw_part = torch.empty(rows, dim, width, dtype=torch.float32, device=x.device)
    db_part = torch.empty(rows, dim, dtype=torch.float32, device=x.device) if bias is not None else None
    args = (x, wk, bias, initial_states, dout, dfinal_states, dx, dinit, dw_part, db_part)
    if long:
        _conv_bwd_long_kernel[(n,)](*args, dim, L, n_t, n_d, t_iters, *strides, **flags,
                                    BLOCK_D=bd, BLOCK_Q=bq, V=V, num_warps=warps)
    else:
        _conv_bwd_kernel[(n_bp, n_c, n_t)](*args, batch, dim, L, b_iters, n_t, *strides, **flags,
                                           BLOCK_B=bb, BLOCK_C=bc, BLOCK_T=bt,
                                           num_warps=_CFG.get("short_bwd_warps", 4))
    dweight = dw_part.sum(0).to(weight.dtype)
    dbias = db_part.sum(0).to(bias.dtype) if bias is not None else None
    if initial_states is not None and need_dinit and width == 1:
        dinit = torch.zeros_like(initial_states)
    return dx, dweight, dbias, dinit
