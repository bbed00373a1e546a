"""Issue 9: one DDP optimisation step on N ranks equals one single-process step with the N-times batch.

Run under torchrun (CUDA + NCCL, or CPU + gloo):
    torchrun --standalone --nproc_per_node=2 bench/ddp_check.py --config m2s2l_paper --set in_channels=1 --batch 4
Every rank builds the model from the same seed and renders the same global batch (synthetic clips,
m2s2l.data.synthetic); rank r takes samples [r*b, (r+1)*b). The ranks take one step of the training recipe of
``m2s2l train`` (``_LossModule`` under DistributedDataParallel, fp32, AdamW, grad-norm clipping); rank 0 also
takes the same step on an untouched copy of the initial model with the whole global batch in one process, then
compares every gradient (after DDP's all-reduce) and every parameter.

BatchNorm: without SyncBatchNorm each rank normalises with the statistics of its own b samples, which is NOT the
doubled-batch step (by design of DDP). ``--bn frozen`` puts the BatchNorm layers in eval mode (running
statistics) in both runs; ``--bn sync`` (CUDA only) converts the DDP model to SyncBatchNorm, whose statistics
are those of the global batch. Both must match the reference.

Tolerances (fp32, TF32 off): gradients |g_ddp - g_ref| <= GRAD_RTOL * max|g_ref| per tensor (the runs differ
only in summation order: the mean of two half-batch means vs one mean); parameters |p_ddp - p_ref| <=
PARAM_ATOL_LR * lr. AdamW's first step is lr * g / (|g| + eps) ~ lr * sign(g): an entry whose reference gradient
is within 4x the observed gradient difference of 0 has no fp32-resolved sign and may step either way, so those entries
(counted and printed) are only held to 2 * lr. A real error (a missed all-reduce, wrong slicing) changes gradients
by O(1) relative (Adam is scale-invariant: only the gradient check catches a sum-vs-mean bug).
Prints one line per mode and "DDP CHECK PASS" / "DDP CHECK FAIL"; exit code 0 only on PASS. ``--control`` adds
a negative control (the same step without DDP, each rank on its half batch) that the check must flag.
"""
import argparse
import copy
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from m2s2l.data.synthetic import render_clip  # noqa: E402
from m2s2l.engine.distributed import broadcast_flag, init_distributed, shutdown  # noqa: E402
from m2s2l.engine.evaluate import apply_backend  # noqa: E402
from m2s2l.engine.train import _LossModule, parse_overrides  # noqa: E402

GRAD_RTOL = 1e-4
PARAM_ATOL_LR = 0.05


def make_batch(cfg, n, seed, device):
    """n (clip, target) samples cut from one synthetic clip of n + T frames: clip i = frames i..i+T-1."""
    T, C, S = cfg.clip_len, cfg.in_channels, cfg.image_size
    frames, _ = render_clip(np.random.default_rng(seed), n + T, S)       # (n + T, S, S) uint8
    x = torch.from_numpy(frames).float().div(127.5).sub(1.0)[:, None].expand(-1, C, -1, -1)
    idx = torch.arange(n)
    return {"clip": x[idx[:, None] + torch.arange(T)].contiguous().to(device),
            "target": x[idx + T].contiguous().to(device)}


def one_step(net, model, batch, lr, grad_clip):
    """The optimisation step of m2s2l.engine.train: loss, backward, clip_grad_norm_, AdamW (fresh state)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4, betas=(0.9, 0.999))
    loss = net(batch)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    opt.step()
    return loss.item(), grads


def _freeze_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def check(args, dist, bn, ddp=True):
    from m2s2l.models import create_model
    torch.manual_seed(args.seed)
    model = create_model(args.config, **parse_overrides(args.set))
    apply_backend(model, args.backend, dist.device)
    model.to(dist.device).train()
    ref = copy.deepcopy(model) if dist.main else None
    if bn == "sync":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if bn == "frozen":
        _freeze_bn(model)
    b = args.batch
    full = make_batch(model.config, b * dist.world, args.seed, dist.device)
    local = {k: v[dist.rank * b:(dist.rank + 1) * b] for k, v in full.items()}
    net = _LossModule(model)
    if dist.enabled and ddp:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    loss_ddp, g_ddp = one_step(net, model, local, args.lr, args.grad_clip)
    ok = True
    if dist.main:
        if bn == "frozen":
            _freeze_bn(ref)
        loss_ref, g_ref = one_step(_LossModule(ref), ref, full, args.lr, args.grad_clip)
        p_ref = dict(ref.named_parameters())
        if set(g_ref) != set(g_ddp):
            raise AssertionError("the DDP and reference steps gave gradients to different parameters")
        g_worst = p_abs = p_rel = p_near0 = 0.0
        n_near0 = 0
        for k, p in model.named_parameters():
            d = (p.detach() - p_ref[k].detach()).abs()
            near0 = torch.zeros_like(d, dtype=torch.bool)
            if k in g_ref:
                g = g_ref[k]
                tol = GRAD_RTOL * max(float(g.abs().max()), 1e-30)
                gd = float((g_ddp[k] - g).abs().max())
                g_worst = max(g_worst, gd / tol * GRAD_RTOL)
                near0 = g.abs() <= 4 * gd   # sign not resolved by the two runs: Adam may step either way
            n_near0 += int(near0.sum())
            p_near0 = max(p_near0, float(d[near0].max()) if near0.any() else 0.0)
            p_abs = max(p_abs, float(d[~near0].max()) if (~near0).any() else 0.0)
            p_rel = max(p_rel, float(d.max()) / max(float(p_ref[k].detach().abs().max()), 1e-30))
        ok = g_worst <= GRAD_RTOL and p_abs <= PARAM_ATOL_LR * args.lr and p_near0 <= 2.01 * args.lr
        print(f"{'' if ddp else 'CONTROL without DDP: '}bn={bn}: world {dist.world} x batch {b} vs 1 x batch "
              f"{b * dist.world}: loss {loss_ref:.6f} "
              f"(rank-0 half {loss_ddp:.6f}); grads max |diff|/max|g| {g_worst:.2e} (tol {GRAD_RTOL:.0e}); params "
              f"max abs diff {p_abs:.2e} (tol {PARAM_ATOL_LR} * lr = {PARAM_ATOL_LR * args.lr:.1e}), max rel "
              f"{p_rel:.2e}; {n_near0} entries with |g| <= 4 * |grad diff|: max diff {p_near0:.2e} "
              f"(tol 2 * lr) -> {'PASS' if ok else 'FAIL'}", flush=True)
    return ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="m2s2l_paper")
    p.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    p.add_argument("--batch", type=int, default=4, help="per-rank batch b (the reference uses b * world)")
    p.add_argument("--backend", default="auto", help="auto|triton|cuda|torch (auto = torch on CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--bn", default="auto", help="frozen | sync | both | auto (both on CUDA, frozen on CPU)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--control", action="store_true", help="also run the step without DDP's all-reduce, which the "
                   "check must flag (proves it can fail)")
    args = p.parse_args(argv)
    dist = init_distributed(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    modes = {"auto": ["frozen", "sync"] if dist.device.type == "cuda" else ["frozen"],
             "both": ["frozen", "sync"]}.get(args.bn, [args.bn])
    if "sync" in modes and dist.device.type != "cuda":
        raise SystemExit("--bn sync needs CUDA (torch's SyncBatchNorm has no CPU implementation)")
    ok = all([check(args, dist, bn) for bn in modes])
    if args.control and dist.enabled:  # negative control: ranks step on their half-batch without the all-reduce
        caught = not check(args, dist, modes[0], ddp=False)
        if dist.main:
            print(f"control (no all-reduce) {'detected' if caught else 'NOT detected'} by the check", flush=True)
        ok = ok and caught
    ok = broadcast_flag(dist, ok)   # rank 0's verdict (the only rank that compares) is every rank's exit code
    if dist.main:
        print("DDP CHECK PASS" if ok else "DDP CHECK FAIL", flush=True)
    shutdown(dist)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
