"""Issue 9: one DDP optimisation step on N ranks equals one single-process step with the N-times batch.

Run under torchrun (CUDA + NCCL, or CPU + gloo):
    torchrun --standalone --nproc_per_node=2 bench/ddp_check.py --config m2s2l_paper --set in_channels=1 --batch 4
Every rank builds the model from the same seed and renders the same global batch (synthetic clips,
m2s2l.data.synthetic); rank r takes samples [r*b, (r+1)*b). The ranks take one step of the training recipe of
``m2s2l train`` (``_LossModule`` under DistributedDataParallel, fp32, AdamW, grad-norm clipping); rank 0 also
takes the same step on untouched copies of the initial model with the whole global batch in one process
("reference"), and compares every gradient (after DDP's all-reduce), parameter and BatchNorm buffer.

BatchNorm: without SyncBatchNorm each rank normalises with the statistics of its own b samples, which is NOT the
doubled-batch step (by design of DDP). ``--bn frozen`` puts the BatchNorm layers in eval mode (running
statistics) in both runs; ``--bn sync`` converts the DDP model to SyncBatchNorm (as ``m2s2l train`` does under
DDP on CUDA; on CPU, which torch's SyncBatchNorm does not support, to an all-reduce stand-in, ``_GlooSyncBN``),
whose statistics are those of the global batch; the reference uses plain train-mode BN.

Noise floor (self-calibration). The reference step is taken three times on rank 0 from fresh copies of the
same initial model: "ref"; "rerun" (same inputs: run-to-run nondeterminism -- fp32 atomics in the Triton scan
backward (dA, dD, ddelta_bias, dB/dC), CUDA's atomicAdd in bilinear-upsampling backward); "perturbed" (the batch
in reversed sample order and every weight multiplied by 1 +- 2**-23, i.e. moved by ~1 ulp: the change of
summation order and the rounding-level differences in every layer's output that DDP also brings -- per-rank
batch b instead of N*b picks other kernel blockings, SyncBatchNorm computes statistics differently from
BatchNorm); with frozen BatchNorm also "split" (the per-rank slices run one after the other in one process, their
gradients accumulated: mathematically the same step, and the same per-slice kernel blocking and rounding as the
ranks -- at m2s2l_paper size on CPU, torch backend, batch 2, it differs from the whole-batch step by up to 2.9e-4
of max|g| (decompose.0.appearance.1.weight), exactly the DDP step's difference there, ~100x what "perturbed"
shows: ReLU/L1 kinks turn rounding into O(1/numel) jumps). noise(t) = max(|ref - rerun|, |ref - perturbed|,
|ref - split|) over the entries of tensor t. It matters where the
true gradient is a heavily cancelling sum: under train-mode BatchNorm the gradient of temporal.{0..L-2}.fuse.bias
is exactly 0 (a per-channel constant before a bias-free 1x1 conv -> BatchNorm, which removes it), so any two fp32
evaluations of it differ by ~100% of its (rounding-noise) size, and other tensors upstream of train-mode BN can
be nearly as ill-conditioned; a fixed GRAD_RTOL * max|g| cannot hold there.

Verdict per tensor t: |g_ddp - g_ref| <= tol(t) = max(GRAD_RTOL * max|g_ref|, NOISE_K * noise(t)). NOISE_K = 8:
noise(t) is the max over t's entries of one realisation of these rounding differences, DDP's (two half-batch
sums, then the all-reduce mean) is another, and the max of an independent realisation exceeds it by up to ~2-3x;
a real error (missed all-reduce, wrong slicing, wrong BN statistics) changes gradients by O(1e-1..1) of max|g|,
far above both. Buffers (BN running stats): the same rule with BUF_RTOL; num_batches_tracked exactly.
Parameters: AdamW's first step is lr * g / (|g| + eps) ~ lr * sign(g): entries whose reference gradient is within
4x the tensor's gradient difference (or tolerance) of 0 may step either way and are held to 2 * lr; the rest to
PARAM_ATOL_LR * lr (Adam is scale-invariant: only the gradient check catches a sum-vs-mean bug).
``--control`` adds a negative control on the first mode: each rank steps its half batch WITHOUT DDP (no
all-reduce); the check must flag it by a wide margin (worst |diff| / tol >= CONTROL_MARGIN).
``--backend torch`` (plain-PyTorch scan and conv1d, no atomics) removes the kernels' nondeterminism from the
picture; on CUDA bilinear-upsampling backward still uses atomicAdd -- the nondeterministic ops torch reports
(deterministic algorithms, warn_only) are printed. Prints per mode a verdict line, the 3 worst tensors for
DDP-vs-ref and for ref-vs-ref noise, losses, and "DDP CHECK PASS" / "DDP CHECK FAIL"; exit code 0 only on PASS.
"""
import argparse
import copy
import os
import re
import sys
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from m2s2l.data.synthetic import render_clip  # noqa: E402
from m2s2l.engine.distributed import broadcast_flag, init_distributed, shutdown  # noqa: E402
from m2s2l.engine.evaluate import apply_backend  # noqa: E402
from m2s2l.engine.train import _LossModule, parse_overrides  # noqa: E402

GRAD_RTOL = 1e-4
NOISE_K = 8
BUF_RTOL = 1e-4
PARAM_ATOL_LR = 0.05
CONTROL_MARGIN = 10.0


def _allow_float64():
    """--dtype float64: let the public ops take float64 on the torch backend. Their references compute in float64
    for float64 inputs (``torch_scan``, ``causal_conv1d.naive``); the public argument checks accept float32 /
    float16 / bfloat16 only (what the kernels take), so this diagnostic widens them in this process."""
    import m2s2l.ops.causal_conv1d as cc
    import m2s2l.ops.selective_scan as ss
    import m2s2l.ops.steps as st
    for m in (cc, ss, st):
        m.FLOAT_DTYPES = (*m.FLOAT_DTYPES, torch.float64)
    ss._F32 = (torch.float32, torch.float64)


def make_batch(cfg, n, seed, device, dtype=torch.float32):
    """n (clip, target) samples cut from one synthetic clip of n + T frames: clip i = frames i..i+T-1."""
    T, C, S = cfg.clip_len, cfg.in_channels, cfg.image_size
    frames, _ = render_clip(np.random.default_rng(seed), n + T, S)       # (n + T, S, S) uint8
    x = torch.from_numpy(frames).to(dtype).div(127.5).sub(1.0)[:, None].expand(-1, C, -1, -1)
    idx = torch.arange(n)
    return {"clip": x[idx[:, None] + torch.arange(T)].contiguous().to(device),
            "target": x[idx + T].contiguous().to(device)}


def one_step(net, model, batch, lr, grad_clip):
    """The optimisation step of m2s2l.engine.train: loss, backward, clip_grad_norm_, AdamW (fresh state).
    ``batch`` may be a list of k equal slices: then the gradient is accumulated (mean of the k slice losses).
    Returns (loss, {name: grad after clipping}, names of the nondeterministic ops torch reported)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4, betas=(0.9, 0.999))
    slices = batch if isinstance(batch, list) else [batch]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for b in slices:
            part = net(b)["loss"] / len(slices)
            part.backward()
            loss = loss + part.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    nondet = {m.group(1) for w in caught if (m := re.match(r"(\S+) does not have a deterministic", str(w.message)))}
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    opt.step()
    return loss.item(), grads, nondet


def _rank_slice(batch, rank, b):
    """Rank ``rank``'s ``b`` samples of the global batch."""
    return {k: v[rank * b:(rank + 1) * b] for k, v in batch.items()}


def _freeze_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def _amax(t):
    return float(t.abs().max()) if t.numel() else 0.0


def _state(model):
    """(parameters, float buffers, integer buffers) of a model, detached."""
    p = {k: v.detach() for k, v in model.named_parameters()}
    b = {k: v.detach() for k, v in model.named_buffers() if v.is_floating_point()}
    i = {k: v.detach() for k, v in model.named_buffers() if not v.is_floating_point()}
    return p, b, i


def reference(init, batch, args, bn, perturb=False):
    """The single-process step on a fresh copy of ``init`` with the whole batch (or a list of slices, accumulated):
    (loss, grads, state, nondet). ``perturb``: every weight times 1 +- 1 ulp (2**-23 in float32, 2**-52 in float64;
    random signs, seeded)."""
    m = copy.deepcopy(init)
    if perturb:
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for q in m.parameters():
                sign = torch.randint(0, 2, q.shape, generator=gen).to(device=q.device, dtype=q.dtype) * 2 - 1
                q.mul_(1 + sign * torch.finfo(q.dtype).eps / 2)
    if bn == "frozen":
        _freeze_bn(m)
    loss, g, nondet = one_step(_LossModule(m), m, batch, args.lr, args.grad_clip)
    return loss, g, _state(m), nondet


def compare(a, ref, noise, rtol):
    """Per tensor: (ratio = |a - ref| / tol, diff, max|ref|, noise, tol), tol = max(rtol * max|ref|, K * noise)."""
    out = {}
    for k, r in ref.items():
        d, s, n = _amax(a[k] - r), _amax(r), noise.get(k, 0.0)
        tol = max(rtol * s, NOISE_K * n, 1e-30)
        out[k] = (d / tol, d, s, n, tol)
    return out


def _fmt(rows, n=3, key=lambda v: v[0]):
    """The n worst rows of ``compare`` (by ``key``), by name."""
    worst = sorted(rows.items(), key=lambda kv: -key(kv[1]))[:n]
    return "; ".join(f"{k}: diff {d:.2e} max|g| {s:.2e} noise {z:.2e} tol {t:.2e} ({r:.2f}x tol)"
                     for k, (r, d, s, z, t) in worst)


def _fmt_noise(a, ref, n=3):
    """The n tensors where two reference runs differ most relative to their max|g|."""
    rows = sorted(((_amax(a[k] - g) / max(_amax(g), 1e-30), _amax(a[k] - g), _amax(g), k) for k, g in ref.items()),
                  reverse=True)[:n]
    if rows[0][1] == 0:
        return f"bitwise identical ({len(ref)} tensors)"
    return "; ".join(f"{k}: diff {d:.2e} max|g| {s:.2e} ({r:.2e} of max|g|)" for r, d, s, k in rows)


class _GlooSyncBN(torch.nn.BatchNorm2d):
    """CPU stand-in for SyncBatchNorm (torch's has no CPU kernel), used by ``--bn sync`` on CPU: train-mode
    statistics over the global batch, all-reduced with the autograd-aware torch.distributed.nn all_reduce."""

    def forward(self, x):
        if not (self.training and torch.distributed.is_initialized()):   # as SyncBatchNorm: plain BN then
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        dims = (0, 2, 3)
        cnt = all_reduce(x.new_full((1,), float(x.numel() // x.shape[1]))).detach()
        mean = all_reduce(x.sum(dims)) / cnt                       # two passes: no E[x^2] - mean^2 cancellation
        var = all_reduce((x - mean[:, None, None]).pow(2).sum(dims)) / cnt
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * cnt / (cnt - 1))
            self.num_batches_tracked.add_(1)
        scale = self.weight * torch.rsqrt(var + self.eps)
        return x * scale[:, None, None] + (self.bias - mean * scale)[:, None, None]


def _sync_bn(model, device):
    """torch's SyncBatchNorm on CUDA (what ``m2s2l train`` uses under DDP); the gloo stand-in on CPU."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            new = _GlooSyncBN(child.num_features, child.eps, child.momentum).to(child.weight.device)
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            _sync_bn(child, device)
    return model


def check(args, dist, bn, control=False):
    """One mode: the DDP step on every rank, the references on rank 0, the comparison. Returns (ok, caught)."""
    from m2s2l.models import create_model
    torch.manual_seed(args.seed)
    model = create_model(args.config, **parse_overrides(args.set))
    apply_backend(model, args.backend, dist.device)
    model.to(device=dist.device, dtype=args.dtype).train()
    init = copy.deepcopy(model)
    if bn == "sync":
        model = _sync_bn(model, dist.device)
    if bn == "frozen":
        _freeze_bn(model)
    b = args.batch
    n = b * dist.world
    full = make_batch(model.config, n, args.seed, dist.device, args.dtype)
    local = _rank_slice(full, dist.rank, b)
    net = _LossModule(model)
    if dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    loss_ddp, g_ddp, nd_ddp = one_step(net, model, local, args.lr, args.grad_clip)
    if control:   # every rank: its half batch, no DDP, plain (or frozen) BatchNorm
        cm = copy.deepcopy(init)
        if bn == "frozen":
            _freeze_bn(cm)
        _, g_ctrl, _ = one_step(_LossModule(cm), cm, local, args.lr, args.grad_clip)
    if not dist.main:
        return True, True
    loss_ref, g_ref, (p_ref, b_ref, i_ref), nd_ref = reference(init, full, args, bn)
    loss_re, g_re, (_, b_re, _), nd_re = reference(init, full, args, bn)
    rev = {k: v.flip(0) for k, v in full.items()}
    loss_or, g_or, (_, b_or, _), nd_or = reference(init, rev, args, bn, perturb=True)
    if set(g_ref) != set(g_ddp):
        raise AssertionError("the DDP and reference steps gave gradients to different parameters")
    refs, nd_sp = [g_re, g_or], set()
    g_sp = None
    if bn == "frozen" and dist.world > 1:   # the same arithmetic as the ranks, in one process (exact math)
        _, g_sp, _, nd_sp = reference(init, [_rank_slice(full, r, b) for r in range(dist.world)], args, bn)
        refs.append(g_sp)
    noise = {k: max(_amax(g[k] - r) for g in refs) for k, r in g_ref.items()}
    grad = compare(g_ddp, g_ref, noise, GRAD_RTOL)
    g_ok = all(r <= 1.0 for r, *_ in grad.values())

    p_dd, b_dd, i_dd = _state(model)
    b_noise = {k: max(_amax(b_re[k] - v), _amax(b_or[k] - v)) for k, v in b_ref.items()}
    bufs = compare(b_dd, b_ref, b_noise, BUF_RTOL) if b_ref else {}
    b_ok = all(r <= 1.0 for r, *_ in bufs.values()) and all(torch.equal(i_dd[k], v) for k, v in i_ref.items())

    p_abs = p_near0 = 0.0
    n_near0 = 0
    for k, p in p_ref.items():
        d = (p_dd[k] - p).abs()
        near0 = torch.zeros_like(d, dtype=torch.bool)
        if k in g_ref:   # sign not resolved by the two runs: Adam may step either way
            near0 = g_ref[k].abs() <= 4 * grad[k][1]
        n_near0 += int(near0.sum())
        p_near0 = max(p_near0, float(d[near0].max()) if near0.any() else 0.0)
        p_abs = max(p_abs, float(d[~near0].max()) if (~near0).any() else 0.0)
    p_ok = p_abs <= PARAM_ATOL_LR * args.lr and p_near0 <= 2.01 * args.lr
    ok = g_ok and b_ok and p_ok
    worst_ratio = max(r for r, *_ in grad.values())
    worst_rel = max(d / max(s, 1e-30) for _, d, s, _, _ in grad.values())
    print(f"bn={bn} backend={args.backend} {str(args.dtype)[6:]}: world {dist.world} x batch {b} vs 1 x batch {n}: "
          f"loss ref {loss_ref:.6f}"
          f" (rerun {loss_re:.6f}, perturbed {loss_or:.6f}; DDP rank-0 half {loss_ddp:.6f}); grads: worst "
          f"|diff|/tol {worst_ratio:.2f} (tol = max({GRAD_RTOL:.0e} * max|g|, {NOISE_K} * noise); worst "
          f"|diff|/max|g| {worst_rel:.2e}); BN buffers {'equal within tol' if b_ok else 'DIFFER'} ({len(bufs)} "
          f"float, worst |diff|/tol {max([r for r, *_ in bufs.values()], default=0.0):.2f}); params max abs diff "
          f"{p_abs:.2e} (tol {PARAM_ATOL_LR} * lr = {PARAM_ATOL_LR * args.lr:.1e}); {n_near0} entries with |g| <= "
          f"4 * |grad diff|: max diff {p_near0:.2e} (tol 2 * lr) -> {'PASS' if ok else 'FAIL'}", flush=True)
    print(f"  worst DDP vs ref (by |diff|/tol): {_fmt(grad)}", flush=True)
    print(f"  worst DDP vs ref (by |diff|/max|g|): {_fmt(grad, key=lambda v: v[1] / max(v[2], 1e-30))}", flush=True)
    print(f"  noise, ref vs rerun (same inputs): {_fmt_noise(g_re, g_ref)}", flush=True)
    print(f"  noise, ref vs perturbed (reversed order, weights +-1 ulp): {_fmt_noise(g_or, g_ref)}", flush=True)
    if g_sp is not None:
        print(f"  noise, ref vs split (per-rank slices accumulated in one process): {_fmt_noise(g_sp, g_ref)}",
              flush=True)
    if bufs and not b_ok:
        print(f"  worst BN buffers: {_fmt(bufs)}", flush=True)
    nd = sorted(nd_ddp | nd_ref | nd_re | nd_or | nd_sp)
    print(f"  nondeterministic ops reported by torch: {', '.join(nd) if nd else 'none'}", flush=True)
    caught = True
    if control:
        ctrl = compare(g_ctrl, g_ref, noise, GRAD_RTOL)
        excess = max(r for r, *_ in ctrl.values())
        flagged = sum(r > 1.0 for r, *_ in ctrl.values())
        caught = excess >= CONTROL_MARGIN
        print(f"CONTROL without DDP (bn={bn}, each rank its half batch, no all-reduce): worst |diff|/tol "
              f"{excess:.2e} (must be >= {CONTROL_MARGIN:g}), {flagged} of {len(ctrl)} tensors over tol; worst: "
              f"{_fmt(ctrl, 1)}", flush=True)
        print(f"control (no all-reduce) {'detected' if caught else 'NOT detected'} by the check", flush=True)
    return ok, caught


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="m2s2l_paper")
    p.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    p.add_argument("--batch", type=int, default=4, help="per-rank batch b (the reference uses b * world)")
    p.add_argument("--backend", default="auto", help="auto|triton|cuda|torch (auto = torch on CPU; torch = no "
                   "kernel atomics)")
    p.add_argument("--device", default="auto")
    p.add_argument("--bn", default="auto", help="frozen | sync | both | auto (both on CUDA, frozen on CPU)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="float64 (with --backend torch: the Triton/CUDA kernels take float32 at most) shrinks "
                   "rounding by ~1e9, so a difference that is rounding amplified by ReLU/L1 kinks or BatchNorm "
                   "statistics vanishes while a real error (missed all-reduce, wrong BN statistics) stays")
    p.add_argument("--control", action="store_true", help="also run the step without DDP's all-reduce, which the "
                   "check must flag (proves it can fail)")
    args = p.parse_args(argv)
    args.dtype = getattr(torch, args.dtype)
    if args.dtype == torch.float64:
        if args.backend not in ("torch", "auto"):
            p.error("--dtype float64 needs --backend torch (the kernels compute in float32)")
        args.backend = "torch"
        _allow_float64()
    dist = init_distributed(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    modes = {"auto": ["frozen", "sync"] if dist.device.type == "cuda" else ["frozen"],
             "both": ["frozen", "sync"]}.get(args.bn, [args.bn])
    ok = True
    for i, bn in enumerate(modes):
        good, caught = check(args, dist, bn, control=args.control and dist.enabled and i == 0)
        ok = ok and good and caught
    ok = broadcast_flag(dist, ok)   # rank 0's verdict (the only rank that compares) is every rank's exit code
    if dist.main:
        print("DDP CHECK PASS" if ok else "DDP CHECK FAIL", flush=True)
    shutdown(dist)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
