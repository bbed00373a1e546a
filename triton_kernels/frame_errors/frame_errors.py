"""Triton kernel of ``m2s2l.ops.frame_errors`` (forward only: the score is never differentiated).

Why: ``m2s2l.models.scoring.score`` formed the two error maps and the appearance PSNR from ~15 elementwise and
reduction kernels, each a pass over a float32 (B, C, H, W) tensor (casts, differences, squares, channel means, and the
PSNR's own second pass over the appearance difference): at 32 streams of 256 x 256 RGB that is ~0.7 GB of traffic a
step for results of 8 MB. Here one program owns BLOCK_P pixels of one frame, reads each input element once (any
strides: the decoders' outputs are channels_last), writes both maps and its partial sum of the appearance map; the
launcher sums the partials (one small reduction).
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _chan_sq_mean(x_ptr, y_ptr, x_off, y_off, sxc, syc, C, m):
    """Mean over C channels of (x - y)^2 at the block's pixels (float32)."""
    acc = tl.zeros(x_off.shape, dtype=tl.float32)
    for c in range(C):
        a = tl.load(x_ptr + x_off + c * sxc, mask=m, other=0.0).to(tl.float32)
        b = tl.load(y_ptr + y_off + c * syc, mask=m, other=0.0).to(tl.float32)
        acc += (a - b) * (a - b)
    return acc / C


@triton.jit
def _frame_errors_kernel(a_ptr, t_ptr, m_ptr, mt_ptr, amap_ptr, mmap_ptr, part_ptr, W, HW, C, Cm, n_blk,
                         sab, sac, sah, saw, stb, stc, sth, stw, smb, smc, smh, smw, sqb, sqc, sqh, sqw,
                         BLOCK_P: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    m = p < HW
    y = (p // W).to(tl.int64)
    x = (p % W).to(tl.int64)
    app = _chan_sq_mean(a_ptr, t_ptr, b * sab + y * sah + x * saw, b * stb + y * sth + x * stw, sac, stc, C, m)
    mot = _chan_sq_mean(m_ptr, mt_ptr, b * smb + y * smh + x * smw, b * sqb + y * sqh + x * sqw, smc, sqc, Cm, m)
    tl.store(amap_ptr + b * HW + p, app, mask=m)
    tl.store(mmap_ptr + b * HW + p, mot, mask=m)
    tl.store(part_ptr + b * n_blk + pid, tl.sum(app, axis=0))  # (pixels past HW loaded 0 - 0: they add 0)


def frame_errors_fwd(app, target, mot, mot_target, block_p=1024):
    """app, target (B, C, H, W), mot, mot_target (B, Cm, H, W) (validated by ``m2s2l.ops.frame_errors``) ->
    (app_map (B, 1, H, W), mot_map (B, 1, H, W), app_mse (B,)), float32, the maps contiguous."""
    B, C, H, W = app.shape
    Cm = mot.shape[1]
    dev = app.device
    amap = torch.empty(B, 1, H, W, device=dev, dtype=torch.float32)
    mmap = torch.empty(B, 1, H, W, device=dev, dtype=torch.float32)
    HW = H * W
    bp = max(16, min(block_p, triton.next_power_of_2(HW)))
    n_blk = triton.cdiv(HW, bp)
    part = torch.empty(B, n_blk, device=dev, dtype=torch.float32)
    _frame_errors_kernel[(B, n_blk)](app, target, mot, mot_target, amap, mmap, part, W, HW, C, Cm, n_blk,
                                     *app.stride(), *target.stride(), *mot.stride(), *mot_target.stride(),
                                     BLOCK_P=bp, num_warps=4)
    return amap, mmap, part.sum(1) / HW
