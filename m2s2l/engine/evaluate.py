"""Frame-level evaluation with the literature's protocol (FFP / MNAD style).

1. Raw score per frame ``t`` of a clip from ``model.score`` on the ``T`` preceding frames (higher = more
   anomalous). The first ``T`` frames of each clip have no full history: they are **not scored and excluded
   from every AUC** (FFP and MNAD drop them the same way), and they are absent from ``scores.csv``.
2. Optional Gaussian temporal smoothing of the raw scores of each clip (``sigma`` frames,
   ``scipy.ndimage.gaussian_filter1d``, mode "nearest"); off by default.
3. Per-video min-max normalisation to [0, 1] (a constant clip becomes all zeros).
4. **micro AUC**: ``sklearn.metrics.roc_auc_score`` over all evaluated frames of all clips concatenated;
   **macro AUC**: the mean of per-clip AUCs over the clips that contain both classes.

Outputs of :func:`write_outputs`: ``scores.csv`` (clip,frame,score,label,raw_score; score = normalised),
``metrics.json`` (micro_auc, macro_auc, per_clip, n_frames, n_excluded, smoothing, checkpoint, ...) and
``score_curves.png`` (one panel per clip, ground-truth anomalous intervals shaded).
"""
import csv
import json
import math
import os

import numpy as np
import torch

from .distributed import DistInfo, gather_strided


def apply_backend(model, backend, device):
    """``model.set_backend``: an explicit choice is passed through; "auto" keeps the model's choice on GPU and
    means "torch" on CPU (where "auto" could pick the Triton *interpreter* under TRITON_INTERPRET=1, a
    kernel-testing mode far too slow to train or evaluate with)."""
    if not hasattr(model, "set_backend"):
        return
    if backend == "auto" and torch.device(device).type == "cpu":
        backend = "torch"
    if backend != "auto":
        model.set_backend(backend)


def autocast_ctx(device, amp):
    device = torch.device(device)
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def score_variants(model, batch, names=None):
    """Raw scores of named formulas (``m2s2l.models.scoring.SCORE_VARIANTS``) from ONE forward pass:
    batch {"clip" (B, T, C, H, W), "target" (B, C, H, W)[, "flow"]} -> ``{name: (B,) float32}``; "default" is
    exactly ``model.score(batch)["score"]``. Needs a model whose ``forward`` returns {"appearance", "motion"}."""
    from m2s2l.models.scoring import SCORE_VARIANTS, score_variants as _variants, variant_terms
    names = list(SCORE_VARIANTS) if names is None else list(names)
    for n in names:
        variant_terms(n)  # unknown names fail before the forward pass
    pred = model.forward(batch["clip"])
    if not isinstance(pred, dict) or "appearance" not in pred or "motion" not in pred:
        raise TypeError(f"score variants need model.forward to return {{'appearance', 'motion'}}, "
                        f"{type(model).__name__} returns {type(pred).__name__}")
    out = {"default": model.score(batch, predictions=pred)["score"]}  # also validates the batch
    rest = [n for n in names if n != "default"]
    if rest:
        out.update(_variants(model.config, pred, batch["target"], model.motion_target(batch), rest))
    return {n: out[n] for n in names}


@torch.no_grad()
def score_indices(model, store, idx, clip_len, batch_size=128, device=None, amp=True, dist=None, progress=False,
                  variant="default"):
    """Raw scores (float64 numpy, aligned with ``idx``) for the samples whose target frames are ``idx``.

    Under DDP each rank scores ``idx[rank::world]`` and the results are all-gathered in order.
    ``progress``: print a line every 30 s (long CPU runs). ``variant``: a name of
    ``m2s2l.models.scoring.SCORE_VARIANTS`` ("default" = ``model.score``)."""
    import time
    dist = dist or DistInfo(device=torch.device(device or store.device))
    device = torch.device(device) if device is not None else dist.device
    was_training = model.training
    model.eval()
    local = idx[dist.rank::dist.world]
    out, t_print = [], time.time()
    for i in range(0, len(local), batch_size):
        batch = store.batch(local[i:i + batch_size], clip_len, device)
        with autocast_ctx(device, amp):
            if variant == "default":
                s = model.score(batch)["score"]
            else:
                s = score_variants(model, batch, [variant])[variant]
        out.append(s.float().reshape(-1))
        if progress and time.time() - t_print > 30:
            print(f"scoring: {i + len(s)}/{len(local)} samples", flush=True)
            t_print = time.time()
    local_scores = torch.cat(out) if out else torch.zeros(0, device=device)
    full = gather_strided(dist, local_scores.to(dist.device), len(idx))
    model.train(was_training)
    return full.double().cpu().numpy()


def score_clips(model, store, clip_len, **kw):
    """``{clip: (n,) float64 raw scores}``, NaN for the first ``clip_len`` frames (no full history)."""
    return split_by_clip(store, score_indices(model, store, store.target_indices(clip_len), clip_len, **kw),
                         clip_len)


def split_by_clip(store, raw, clip_len):
    """Scores of ``store.target_indices(clip_len)`` (clip after clip) -> ``{clip: (n,) float64}``, NaN for the
    first ``clip_len`` frames of each clip."""
    out, pos = {}, 0
    for name, n in zip(store.names, store.lengths):
        s = np.full(n, np.nan)
        k = max(0, n - clip_len)
        s[clip_len:] = raw[pos:pos + k]
        pos += k
        out[name] = s
    return out


def minmax(s):
    s = np.asarray(s, np.float64)
    lo, hi = s.min(), s.max()
    return np.zeros_like(s) if hi - lo <= 0 else (s - lo) / (hi - lo)


def frame_auc(y, s):
    """ROC AUC of labels y vs scores s; None when y has a single class."""
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None


def protocol_metrics(raw_by_clip, labels_by_clip, clip_len, smooth_sigma=0.0):
    """Apply the protocol (module docstring) to ``{clip: raw (n,)}`` and ``{clip: labels (n,)}`` (labels may
    be None: scores only). Returns ``(metrics dict, {clip: normalised scores of frames clip_len..n-1})``."""
    from scipy.ndimage import gaussian_filter1d
    norm, per_clip, ys, ss = {}, {}, [], []
    for name, raw in raw_by_clip.items():
        s = np.asarray(raw, np.float64)[clip_len:]
        if s.size == 0:
            continue
        if not np.all(np.isfinite(s)):
            raise ValueError(f"clip {name!r} has non-finite raw scores")
        if smooth_sigma and smooth_sigma > 0:
            s = gaussian_filter1d(s, smooth_sigma, mode="nearest")
        norm[name] = minmax(s)
        entry = {"n_frames": int(s.size)}
        if labels_by_clip is not None:
            y = np.asarray(labels_by_clip[name]).astype(np.int64)[clip_len:]
            entry.update(n_anomalous=int(y.sum()), auc=frame_auc(y, norm[name]))
            ys.append(y)
            ss.append(norm[name])
        per_clip[name] = entry
    metrics = {"n_frames": int(sum(e["n_frames"] for e in per_clip.values())),
               "n_excluded": int(sum(min(clip_len, len(r)) for r in raw_by_clip.values())),
               "excluded_first_frames_per_clip": int(clip_len), "n_clips": len(per_clip),
               "smoothing": {"type": "gaussian", "sigma": float(smooth_sigma)} if smooth_sigma else None,
               "normalisation": "per-video min-max", "per_clip": per_clip, "micro_auc": None, "macro_auc": None}
    if ys:
        y, s = np.concatenate(ys), np.concatenate(ss)
        metrics["micro_auc"] = frame_auc(y, s)
        aucs = [e["auc"] for e in per_clip.values() if e.get("auc") is not None]
        metrics["macro_auc"] = float(np.mean(aucs)) if aucs else None
        metrics["n_clips_in_macro"] = len(aucs)
        metrics["anomalous_fraction"] = float(y.mean())
    return metrics, norm


def write_outputs(out_dir, raw_by_clip, norm_by_clip, labels_by_clip, metrics, clip_len, plot=True):
    """Write scores.csv, metrics.json and (optionally) score_curves*.png into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "scores.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip", "frame", "score", "label", "raw_score"])
        for name, s in norm_by_clip.items():
            raw = raw_by_clip[name]
            lab = labels_by_clip[name] if labels_by_clip is not None else None
            for j, v in enumerate(s):
                t = j + clip_len
                w.writerow([name, t, f"{v:.6f}", "" if lab is None else int(lab[t]), f"{raw[t]:.6g}"])
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    if plot:
        plot_curves(out_dir, norm_by_clip, labels_by_clip, clip_len, metrics)


def _runs(lab):
    """Contiguous runs of 1s as (start, end_exclusive) pairs."""
    lab = np.asarray(lab).astype(np.int8)
    d = np.diff(np.concatenate([[0], lab, [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def plot_curves(out_dir, norm_by_clip, labels_by_clip, clip_len, metrics, per_page=24):
    """Score curves, one panel per clip, ground-truth anomalies shaded red; pages of ``per_page`` clips."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(norm_by_clip)
    paths = []
    for page in range(max(1, math.ceil(len(names) / per_page))):
        chunk = names[page * per_page:(page + 1) * per_page]
        cols = min(4, max(1, len(chunk)))
        rows = max(1, math.ceil(len(chunk) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.2 * rows), squeeze=False)
        for ax, name in zip(axes.flat, chunk):
            s = norm_by_clip[name]
            x = np.arange(clip_len, clip_len + len(s))
            if labels_by_clip is not None:
                for a, b in _runs(labels_by_clip[name]):
                    ax.axvspan(a - 0.5, b - 0.5, color="tab:red", alpha=0.2, lw=0)
            ax.plot(x, s, color="tab:blue", lw=1)
            auc = metrics["per_clip"].get(name, {}).get("auc")
            ax.set_title(f"{name}" + (f"  AUC {auc:.3f}" if auc is not None else ""), fontsize=9)
            ax.set_ylim(-0.05, 1.05)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(chunk):]:
            ax.axis("off")
        micro, macro = metrics.get("micro_auc"), metrics.get("macro_auc")
        if micro is not None:
            fig.suptitle(f"micro AUC {micro:.4f}, macro AUC {macro:.4f} (red: ground-truth anomalies)", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, "score_curves.png" if page == 0 else f"score_curves_{page + 1}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def run_eval(args):
    """Body of ``m2s2l eval``: score a split, apply the protocol, write the outputs; returns the metrics."""
    import time

    from m2s2l.data.labels import find_label_source, load_labels
    from m2s2l.data.store import FrameStore

    from .checkpoint import load_checkpoint
    from .distributed import init_distributed, shutdown
    dist = init_distributed(args.device)
    model, ckpt = load_checkpoint(args.ckpt, dist.device)
    apply_backend(model, args.backend, dist.device)
    cfg = model.config
    split = args.split if args.split else ("testing" if os.path.isdir(os.path.join(args.data, "testing")) else None)
    store = FrameStore.load(args.data, split, cfg.image_size, cfg.in_channels, cache_dir=args.cache_dir,
                            workers=args.workers, verbose=dist.main)
    if getattr(cfg, "motion_target", "diff") == "flow":
        store.compute_flow(ckpt.get("train_args", {}).get("flow_method", "dis") if ckpt.get("train_args") else "dis")
    store.to(dist.device)
    source = args.labels or find_label_source(args.data, split or "testing")
    labels = load_labels(source, store.names, store.lengths) if source else None
    if labels is not None:
        store.attach_labels(labels)
    t0 = time.time()
    variant = getattr(args, "score", "default")
    raw = score_clips(model, store, cfg.clip_len, batch_size=args.batch_size, device=dist.device, amp=args.amp,
                      dist=dist, progress=dist.main, variant=variant)
    dt = time.time() - t0
    metrics = None
    if dist.main:
        metrics, norm = protocol_metrics(raw, labels, cfg.clip_len, args.smooth)
        metrics.update(checkpoint=os.path.abspath(args.ckpt), model=ckpt["model"], labels=source,
                       data=os.path.abspath(args.data), split=split, clip_len=cfg.clip_len,
                       scoring_frames_per_s=round(metrics["n_frames"] / max(dt, 1e-9), 1), device=str(dist.device),
                       world_size=dist.world, calibration=ckpt.get("calibration"), score_variant=variant)
        write_outputs(args.out, raw, norm, labels, metrics, cfg.clip_len, plot=not args.no_plot)
        if metrics["micro_auc"] is not None:
            print(f"eval: micro AUC {metrics['micro_auc']:.4f}, macro AUC {metrics['macro_auc']:.4f} "
                  f"({metrics['n_frames']} frames, {metrics['n_clips']} clips, smoothing sigma {args.smooth}, "
                  f"score {variant}) "
                  f"-> {args.out}")
        else:
            print(f"eval: no labels found; wrote raw scores for {metrics['n_frames']} frames -> {args.out}")
    shutdown(dist)
    return metrics
