"""Calibration on normal data, stored in the checkpoint for online (streaming) alerts.

Per-video min-max normalisation (the offline evaluation protocol) needs the whole video; a live stream
cannot use it. Instead, at the end of training the raw scores of normal frames (the held-out validation
clips when ``--val-clips`` > 0, else training clips, which is optimistic because the model has fit them) give::

    {"method": "zscore", "mean": mu, "std": sigma,          # z = (raw - mean) / std, video-independent
     "quantile": q, "threshold": raw score at quantile q of the normal scores (alert when raw > threshold),
     "threshold_z": (threshold - mean) / std, "false_alarm_rate": 1 - q  (on the calibration frames),
     "n_frames": number of calibration frames, "source": "val" | "train" | "clips", "clips": [...]}

The trade-off: a higher q gives fewer false alarms on normal footage but later / missed detections;
q = 0.995 flags ~0.5% of normal frames (about one frame in 200; with hysteresis far fewer alert episodes).

``m2s2l calibrate --ckpt IN --data ROOT --out OUT`` recalibrates a trained checkpoint without retraining: on your
own normal footage (a camera's first hour), or after changing the score formula, which changes the raw scores::

    m2s2l calibrate --ckpt model.pt --data ROOT --out model_motion.pt \
        --set score_w_appearance=0 --set score_w_motion=1          # clips: the checkpoint's validation clips

Only the score's settings (config keys ``score_*``) may change: they do not touch the weights. The clips scored are
``--clips`` (names in ROOT's training split, or ROOT itself when it has no ``training/``; ``source`` "val" when they
are all held-out validation clips of the checkpoint, else "clips"), else the checkpoint's held-out validation clips
("val"), else every clip ("train": optimistic if the model was trained on them).
The output is written atomically; ``extra["recalibrated"]`` records the previous config values, calibration,
clips and date.
"""
import numpy as np


def calibrate(raw_scores, quantile=0.995, source="val", clips=()):
    """Calibration dict from a 1-D array of raw scores of normal frames (see module docstring)."""
    s = np.asarray(raw_scores, dtype=np.float64).reshape(-1)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("raw_scores must contain at least one finite score")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    mean, std = float(s.mean()), float(s.std())
    std = std if std > 0 else 1e-12
    thr = float(np.quantile(s, quantile))
    return {"method": "zscore", "mean": mean, "std": std, "quantile": float(quantile), "threshold": thr,
            "threshold_z": (thr - mean) / std, "false_alarm_rate": float(np.mean(s > thr)),
            "n_frames": int(s.size), "source": source, "clips": list(clips)}


def normalise(raw, calibration):
    """Video-independent z-score of raw scores with a stored calibration."""
    return (np.asarray(raw, np.float64) - calibration["mean"]) / calibration["std"]


SCORE_KEYS_PREFIX = "score_"


def add_parser(subparsers):
    p = subparsers.add_parser("calibrate", help="recompute a checkpoint's alert calibration (optionally with a new "
                                                "score formula) on normal clips")
    p.add_argument("--ckpt", required=True, help="checkpoint to recalibrate (model.pt)")
    p.add_argument("--data", required=True, help="normal clips: a dataset root (its training/ split) or a folder "
                                                 "of clips")
    p.add_argument("--out", required=True, help="checkpoint to write (may equal --ckpt: replaced atomically)")
    p.add_argument("--clips", default=None, help="comma-separated clip names (default: the checkpoint's "
                                                 "validation clips, else all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a score setting first (score_w_appearance, score_w_motion, score_patch)")
    p.add_argument("--quantile", type=float, default=None, help="alert quantile (default: the checkpoint's, "
                                                                "else 0.995)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=8, help="threads decoding frames")
    p.add_argument("--shard-mib", type=float, default=0, help="split the output into shards of this many MiB")
    p.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:1")
    p.add_argument("--amp", dest="amp", action="store_true", default=True, help="bf16 autocast on CUDA (default)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="full float32")
    p.add_argument("--backend", default="auto", help="kernel backend: auto|triton|cuda|torch")
    p.set_defaults(func=_cli)


def _cli(args):
    run_calibrate(args)
    return 0


def score_overrides(items, config):
    """``--set`` items -> dict of score settings, refusing keys that are not ``score_*`` fields of ``config``."""
    from .train import parse_overrides
    out = parse_overrides(items)
    for k in out:
        if not k.startswith(SCORE_KEYS_PREFIX) or k not in config:
            known = sorted(c for c in config if c.startswith(SCORE_KEYS_PREFIX))
            raise ValueError(f"--set {k}: only the score's settings can change without retraining: {known}")
    return out


def run_calibrate(args):
    """Body of ``m2s2l calibrate`` (module docstring); returns the new calibration dict."""
    import datetime
    import os

    from m2s2l.data.store import FrameStore

    from .checkpoint import check_checkpoint, model_from_checkpoint, read_checkpoint, save_checkpoint
    from .distributed import resolve_device
    from .evaluate import apply_backend, score_indices
    from .train import _split_of
    ckpt = check_checkpoint(read_checkpoint(args.ckpt), args.ckpt)
    changes = score_overrides(args.set, ckpt["config"])
    old_config = {k: ckpt["config"][k] for k in changes}
    ckpt["config"] = {**ckpt["config"], **changes}
    device = resolve_device(args.device)
    model = model_from_checkpoint(ckpt, device, args.ckpt)  # validates the new score settings
    apply_backend(model, args.backend, device)
    cfg = model.config
    prev = ckpt.get("calibration") or {}
    quantile = args.quantile if args.quantile is not None else prev.get("quantile", 0.995)
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"--quantile must be in (0, 1), got {quantile}")
    val = list((ckpt.get("extra") or {}).get("val_clips") or [])
    if args.clips:
        names = [c.strip() for c in args.clips.split(",") if c.strip()]
        source = "val" if set(names) <= set(val) else "clips"
    elif val:
        names, source = val, "val"
    else:
        names, source = None, "train"
    store = FrameStore.load(args.data, _split_of(args.data), cfg.image_size, cfg.in_channels, workers=args.workers,
                            names=names)  # decodes only the clips scored
    names = list(store.names)
    if getattr(cfg, "motion_target", "diff") == "flow":
        store.compute_flow((ckpt.get("train_args") or {}).get("flow_method", "dis"))
    store.to(device)
    idx = store.target_indices(cfg.clip_len)
    if len(idx) == 0:
        raise ValueError(f"--clips: no frame of {names} has {cfg.clip_len} frames of history")
    raw = score_indices(model, store, idx, cfg.clip_len, batch_size=args.batch_size, device=device, amp=args.amp,
                        progress=True)
    calib = calibrate(raw, quantile, source, names)
    extra = dict(ckpt.get("extra") or {})
    extra["recalibrated"] = list(extra.get("recalibrated") or []) + [{
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "from": os.path.abspath(args.ckpt), "data": os.path.abspath(args.data), "clips": names,
        "config_before": old_config, "config_set": changes, "calibration_before": prev or None,
        "device": str(device), "amp": bool(args.amp and device.type == "cuda")}]
    ckpt.update(calibration=calib, extra=extra)
    save_checkpoint(ckpt, args.out, shard_mib=args.shard_mib)
    print(f"calibrate: {calib['n_frames']} frames of {names}: mean {calib['mean']:.4f}, std {calib['std']:.4f}, "
          f"threshold {calib['threshold']:.4f} (quantile {quantile}) -> {args.out}")
    return calib
