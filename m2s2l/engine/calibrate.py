"""Calibration on normal data, stored in the checkpoint for online (streaming) alerts.

Per-video min-max normalisation (the offline evaluation protocol) needs the whole video; a live stream
cannot use it. Instead, at the end of training the raw scores of normal frames (the held-out validation
clips when ``--val-clips`` > 0, else training clips, which is optimistic because the model has fit them) give::

    {"method": "zscore", "mean": mu, "std": sigma,          # z = (raw - mean) / std, video-independent
     "quantile": q, "threshold": raw score at quantile q of the normal scores (alert when raw > threshold),
     "threshold_z": (threshold - mean) / std, "false_alarm_rate": 1 - q  (on the calibration frames),
     "n_frames": number of calibration frames, "source": "val" | "train", "clips": [...]}

The trade-off: a higher q gives fewer false alarms on normal footage but later / missed detections;
q = 0.995 flags ~0.5% of normal frames (about one frame in 200; with hysteresis far fewer alert episodes).
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
