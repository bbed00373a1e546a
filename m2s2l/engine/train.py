"""The training engine behind ``m2s2l train`` (single process, or DDP under torchrun).

* Data: the split's frames decoded once into a uint8 :class:`~m2s2l.data.store.FrameStore` (on the GPU when it
  fits), batches gathered by index arithmetic. ``--val-clips K`` holds out K training clips (spread evenly)
  for validation loss, ``best.pt`` selection and calibration.
* Order: epoch ``e`` visits the training targets in ``randperm`` seeded by ``(seed, e)`` -- independent of the
  number of ranks; global batch ``b`` of size ``batch_size * world`` is ``perm[b*G:(b+1)*G]`` and rank r takes
  its r-th slice, so N ranks take exactly the step 1 rank takes with the N-times batch, and a resume with a
  different N continues from the same sample position.
* DDP on CUDA converts BatchNorm to SyncBatchNorm (``--no-sync-bn`` to keep per-rank statistics), so N ranks take
  the step one process takes with the N-times batch (bench/ddp_check.py checks it on 2 GPUs).
* Optimiser: AdamW; LR = linear warmup over ``warmup_epochs`` then cosine to ``min_lr_ratio * lr``, a function of
  the fractional epoch, so it survives resumes with any N. bf16 autocast on CUDA (``--no-amp`` to disable).
* Checkpoints (rank 0, atomic): ``last.pt`` after every epoch and when a stop condition (``--max-minutes``,
  ``--stop-after-epochs``/``--stop-after-steps``) ends the run mid-way; ``best.pt`` on best validation loss; at the
  end ``model.pt`` (weights + config + calibration, no optimiser). ``--resume`` continues exactly from
  ``last.pt``: model, optimiser, RNG, epoch and sample position. A kill -9 loses at most the current epoch.
* Logs: ``metrics.jsonl`` (one JSON object per log interval / epoch / event) and a progress bar with loss,
  frames/s (predicted frames = samples per second, all ranks) and ETA.
"""
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch

from m2s2l.data.store import FrameStore, choose_val_clips

from .calibrate import calibrate
from .checkpoint import (load_checkpoint, make_checkpoint, read_checkpoint, rng_state, save_checkpoint,
                         set_rng_state)
from .distributed import all_reduce_sum, broadcast_flag, init_distributed, shutdown
from .evaluate import apply_backend, autocast_ctx, score_indices


class _LossModule(torch.nn.Module):
    """Routes ``forward(batch)`` to ``model.compute_losses`` so DDP's hooks see the training computation."""

    def __init__(self, model):
        super().__init__()
        self.module = model

    def forward(self, batch):
        return self.module.compute_losses(batch)


def lr_factor(epoch_f, epochs, warmup_epochs, min_lr_ratio):
    """LR multiplier at fractional epoch ``epoch_f``: linear warmup, then cosine down to ``min_lr_ratio``."""
    warm = min(warmup_epochs, 0.2 * epochs)
    if warm > 0 and epoch_f < warm:
        return max(epoch_f / warm, 1e-3)
    p = min(1.0, (epoch_f - warm) / max(epochs - warm, 1e-9))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def parse_overrides(items):
    """``["clip_len=4", "image_size=128", "motion_target=flow"]`` -> dict with Python literals where possible."""
    import ast
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--set expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip()] = v
    return out


def _split_of(root):
    return "training" if os.path.isdir(os.path.join(root, "training")) else None


def _seed_all(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Logger:
    def __init__(self, path, enabled):
        self.f = open(path, "a") if enabled else None

    def log(self, **rec):
        if self.f:
            rec["time"] = round(time.time(), 3)
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()


def _progress(total, initial, enabled, desc):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
        if not (sys.stderr.isatty() or os.environ.get("M2S2L_TQDM") == "1"):
            return None  # not a terminal: plain progress lines instead
        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr, mininterval=1.0)
    except ImportError:
        return None


def build_model(args, dist):
    """(name, model, resume checkpoint or None) from --config/--set or from the checkpoint to resume."""
    import m2s2l.models  # noqa: F401
    from m2s2l.models import create_model
    resume = None
    if args.resume:
        path = os.path.join(args.out, "last.pt") if args.resume == "auto" else args.resume
        if os.path.isfile(path):
            model, resume = load_checkpoint(path)
            if dist.main:
                print(f"resuming from {path}: epoch {resume['epoch']}, position {resume['position']}, "
                      f"step {resume['step']}")
            return resume["model"], model, resume
        if args.resume != "auto":
            raise FileNotFoundError(f"--resume {path!r}: no such checkpoint")
        if dist.main:
            print(f"--resume: no {path} yet, starting a new run")
    overrides = parse_overrides(args.set)
    return args.config, create_model(args.config, **overrides), None


def train(args):
    """Run training as described by the module docstring. ``args``: the parsed ``m2s2l train`` namespace."""
    t_start = time.time()
    args.max_epochs = getattr(args, "max_epochs", None) or args.epochs  # --fit-minutes may lower args.epochs
    dist = init_distributed(args.device)
    device = dist.device
    _seed_all(args.seed + dist.rank)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    name, model, resume = build_model(args, dist)
    cfg = model.config
    T, C, size = cfg.clip_len, cfg.in_channels, cfg.image_size
    apply_backend(model, args.backend, device)
    model.to(device)
    if dist.main:
        os.makedirs(args.out, exist_ok=True)
    log = _Logger(os.path.join(args.out, "metrics.jsonl"), dist.main)

    store = FrameStore.load(args.data, _split_of(args.data), size, C, cache_dir=args.cache_dir,
                            workers=args.workers, verbose=dist.main)
    if getattr(cfg, "motion_target", "diff") == "flow":
        store.compute_flow(args.flow_method, verbose=dist.main)
    data_dev = device
    if device.type == "cuda" and args.data_device == "auto":
        free = torch.cuda.mem_get_info(device)[0]
        data_dev = device if store.frames.nbytes * (3 if store.flow is not None else 1) < 0.3 * free else "cpu"
    elif args.data_device != "auto":
        data_dev = torch.device(args.data_device)
    store.to(data_dev, pin=True)

    val_names = resume["extra"]["val_clips"] if resume else choose_val_clips(store.names, args.val_clips)
    train_names = [n for n in store.names if n not in set(val_names)]
    train_idx = store.target_indices(T, set(train_names))
    val_idx = store.target_indices(T, set(val_names))
    G = args.batch_size * dist.world
    steps_per_epoch = len(train_idx) // G
    if steps_per_epoch == 0:
        raise ValueError(f"global batch {G} (= --batch-size {args.batch_size} x {dist.world} ranks) exceeds the "
                         f"{len(train_idx)} training samples")
    n_ep = steps_per_epoch * G

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999))
    epoch, position, step = 0, 0, 0
    best_val = float("inf")
    if resume:
        opt.load_state_dict(resume["optimizer"])
        epoch, position, step = resume["epoch"], resume["position"], resume["step"]
        best_val = resume["extra"].get("best_val", best_val)
        if dist.main:
            set_rng_state(resume["rng"])
        else:
            _seed_all(args.seed + dist.rank + 7919 * step)
        position = min(position, n_ep)
    sched = {"kind": "warmup_cosine", "base_lr": args.lr, "warmup_epochs": args.warmup_epochs,
             "min_lr_ratio": args.min_lr_ratio, "epochs": args.epochs}

    if dist.enabled and device.type == "cuda" and getattr(args, "sync_bn", True):
        # BatchNorm statistics over the global batch, so N ranks take the step one process takes with the N-times
        # batch (plain DDP normalises each rank's slice separately). Same parameters; checkpoints stay plain BN.
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = _LossModule(model)
    if dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=args.find_unused)
    run_net = torch.compile(net) if args.compile else net

    if dist.main:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"train {name}: {n_params / 1e6:.2f}M params, {len(train_names)} train clips ({len(train_idx)} "
              f"samples), {len(val_names)} val clips, T={T}, size={size}, C={C}, device={device}, data on "
              f"{store.device}, world={dist.world}, global batch={G}, {steps_per_epoch} steps/epoch")
        log.log(event="start", model=name, config=_jsonable(cfg), world=dist.world, global_batch=G,
                steps_per_epoch=steps_per_epoch, train_clips=train_names, val_clips=val_names,
                device=str(device), data_device=str(store.device))

    def checkpoint(path, ep, pos, calibration=None, finished=False, half=args.save_half, optimizer=True):
        ck = make_checkpoint(name, model, save_half=half, optimizer=opt.state_dict() if optimizer else None,
                             scheduler=sched, epoch=ep, position=pos, step=step, rng=rng_state(),
                             calibration=calibration, train_args=_jsonable(vars(args)),
                             extra={"val_clips": val_names, "world_size": dist.world, "best_val": best_val,
                                    "finished": finished, "global_batch": G})
        return save_checkpoint(ck, path, shard_mib=args.shard_mib)

    stop_reason = None
    steps_this_run, t_run, t_print = 0, time.time(), time.time()
    bar = _progress(args.epochs * steps_per_epoch, epoch * steps_per_epoch + position // G, dist.main, "train")
    while epoch < args.epochs and stop_reason is None:
        t_epoch = time.time()
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
        perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
        model.train()
        acc, n_acc, t_log = {}, 0, time.time()
        while position + G <= n_ep:
            ep_f = epoch + (position + G) / n_ep
            for g in opt.param_groups:
                g["lr"] = args.lr * lr_factor(ep_f, args.epochs, args.warmup_epochs, args.min_lr_ratio)
            idx = perm[position + dist.rank * args.batch_size: position + (dist.rank + 1) * args.batch_size]
            batch = store.batch(idx, T, device)
            with autocast_ctx(device, args.amp):
                losses = run_net(batch)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip if args.grad_clip > 0 else 1e30)
            if torch.isfinite(gnorm):
                opt.step()
            else:
                acc["skipped"] = acc.get("skipped", 0) + 1
            position += G
            step += 1
            steps_this_run += 1
            for k, v in losses.items():
                if torch.is_tensor(v) and v.numel() == 1:
                    acc[k] = acc.get(k, 0.0) + v.detach().float()
            n_acc += 1
            if bar is not None:
                bar.update(1)
            if step % args.log_every == 0 or position + G > n_ep:
                rec = {k: float(v) / n_acc if k != "skipped" else int(v) for k, v in acc.items()}
                now = time.time()
                fps = (n_acc * G) / max(now - t_log, 1e-9)
                eta = (args.epochs * steps_per_epoch - step) * (now - t_run) / max(steps_this_run, 1)
                if bar is not None:
                    bar.set_postfix(loss=f"{rec.get('loss', float('nan')):.4f}", fps=f"{fps:.0f}", ep=epoch + 1)
                elif dist.main and (now - t_print > 30 or position + G > n_ep):
                    print(f"epoch {epoch + 1}/{args.epochs} step {step} loss {rec.get('loss', float('nan')):.4f} "
                          f"frames/s {fps:.0f} eta {eta / 60:.1f} min", flush=True)
                    t_print = now
                log.log(event="train", epoch=epoch, step=step, lr=opt.param_groups[0]["lr"], frames_per_s=fps,
                        grad_norm=float(gnorm), eta_s=round(eta, 1), **rec)
                acc, n_acc, t_log = {}, 0, time.time()
            if args.max_minutes or args.stop_after_steps:
                stop = bool(args.max_minutes and (time.time() - t_start) > args.max_minutes * 60)
                stop = stop or bool(args.stop_after_steps and steps_this_run >= args.stop_after_steps)
                if broadcast_flag(dist, stop):
                    stop_reason = "time budget" if args.max_minutes else "stop_after_steps"
                    break
        if stop_reason is None:  # epoch completed
            epoch, position = epoch + 1, 0
            if args.fit_minutes:
                args.epochs = fit_epochs(args, epoch, t_start, t_epoch, dist)
                sched["epochs"] = args.epochs
            rec = {"event": "epoch", "epoch": epoch, "step": step, "elapsed_s": round(time.time() - t_start, 1)}
            if len(val_idx):
                vl = validation_loss(model, store, val_idx, T, args, dist)
                rec["val_loss"] = vl
                if vl < best_val:
                    best_val = vl
                    if dist.main:
                        checkpoint(os.path.join(args.out, "best.pt"), epoch, 0, optimizer=False)
            log.log(**rec)
            if dist.main and bar is None and "val_loss" in rec:
                print(f"epoch {epoch}/{args.epochs} val_loss {rec['val_loss']:.5f} (best {best_val:.5f})", flush=True)
            if dist.main:
                checkpoint(os.path.join(args.out, "last.pt"), epoch, 0)
                if args.save_every and epoch % args.save_every == 0:
                    checkpoint(os.path.join(args.out, f"epoch_{epoch:03d}.pt"), epoch, 0, optimizer=False)
            if args.stop_after_epochs and epoch >= args.stop_after_epochs and epoch < args.epochs:
                stop_reason = "stop_after_epochs"
        elif dist.main:
            checkpoint(os.path.join(args.out, "last.pt"), epoch, position)
    if bar is not None:
        bar.close()
    if stop_reason is not None:
        if dist.main:
            print(f"stopped ({stop_reason}) at epoch {epoch} position {position}, step {step}; "
                  f"continue with --resume (checkpoint {os.path.join(args.out, 'last.pt')})")
            log.log(event="stopped", reason=stop_reason, epoch=epoch, position=position, step=step)
        shutdown(dist)
        return {"finished": False, "epoch": epoch, "step": step}

    # ---- finished: select, calibrate, write model.pt
    if args.select == "best" and len(val_idx) and os.path.isfile(os.path.join(args.out, "best.pt")):
        sd = read_checkpoint(os.path.join(args.out, "best.pt"))["state_dict"]
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in sd.items()})
    calib = calibration_for(model, store, train_idx, val_idx, val_names, T, args, dist)
    if dist.main:
        checkpoint(os.path.join(args.out, "last.pt"), epoch, 0, calibration=calib, finished=True)
        checkpoint(os.path.join(args.out, "model.pt"), epoch, 0, calibration=calib, finished=True, optimizer=False)
        log.log(event="done", epoch=epoch, step=step, calibration=calib, elapsed_s=round(time.time() - t_start, 1))
        print(f"done: {epoch} epochs, {step} steps in {time.time() - t_start:.0f}s; calibration threshold "
              f"{calib['threshold']:.4g} (q={calib['quantile']}, {calib['source']}); wrote "
              f"{os.path.join(args.out, 'model.pt')}")
    shutdown(dist)
    return {"finished": True, "epoch": epoch, "step": step, "calibration": calib}


@torch.no_grad()
def validation_loss(model, store, idx, T, args, dist):
    """Mean ``loss`` over validation samples (sharded over ranks, summed with all_reduce)."""
    model.eval()
    tot = torch.zeros(2, dtype=torch.float64, device=dist.device)
    local = idx[dist.rank::dist.world]
    for i in range(0, len(local), args.batch_size):
        b = store.batch(local[i:i + args.batch_size], T, dist.device)
        with autocast_ctx(dist.device, args.amp):
            loss = model.compute_losses(b)["loss"].double()
        tot[0] += loss * len(b["target"])
        tot[1] += len(b["target"])
    all_reduce_sum(dist, tot)
    model.train()
    return float(tot[0] / tot[1].clamp_min(1))


def fit_epochs(args, epoch, t_start, t_epoch, dist):
    """``--fit-minutes``: the epoch count that lets the schedule finish inside the wall-time budget.

    Re-fitted after every epoch from the epoch just completed (validation included), so a slow first epoch (JIT
    compilation, caches) can be made up later; 5% of the budget is kept for calibration and the final
    checkpoints. Never above the ``--epochs`` given on the command line nor below the epochs already done; rank 0
    decides so that every rank agrees."""
    per_epoch = max(time.time() - t_epoch, 1e-6)
    left = args.fit_minutes * 60 * 0.95 - (time.time() - t_start)
    n = max(epoch, min(args.max_epochs, epoch + int(left // per_epoch)))
    if dist.enabled:
        t = torch.tensor([n], dtype=torch.int64, device=dist.device)
        torch.distributed.broadcast(t, 0)
        n = int(t.item())
    return n


def calibration_for(model, store, train_idx, val_idx, val_names, T, args, dist):
    """Calibrate on validation clips, else on up to ``calib_max`` evenly spaced training samples."""
    if len(val_idx):
        idx, src, clips = val_idx, "val", val_names
    else:
        k = min(len(train_idx), args.calib_max)
        idx = train_idx[torch.linspace(0, len(train_idx) - 1, k).long()]
        src, clips = "train", []
    raw = score_indices(model, store, idx, T, batch_size=args.batch_size * 2, device=dist.device,
                        amp=args.amp, dist=dist)
    return calibrate(raw, args.calib_quantile, src, clips)


def _jsonable(obj):
    import dataclasses
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    return json.loads(json.dumps(obj, default=str))
