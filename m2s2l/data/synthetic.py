"""A small deterministic synthetic surveillance dataset (no downloads) for the demo and the tests.

A fixed camera looks at a static textured scene with a walkway; dark "pedestrians" (body + head, swinging
legs) walk left-to-right at ordinary speed. Test clips contain one anomalous event each, cycling through:

    fast     a pedestrian moving ~4x faster than anyone in training
    against  a pedestrian walking right-to-left, against the flow
    object   an unusual object: a bright cart-like box crossing the walkway at ~2x walking speed

A frame is labelled anomalous while any part of the anomalous entity is inside the image. Everything is
drawn from ``numpy.random.default_rng(seed)``, so a seed gives byte-identical files. Layout written by
:func:`make_dataset` (the FFP/MNAD frames layout the loaders read, labels as CSV)::

    root/training/frames/<clip>/000.png ...   root/testing/frames/<clip>/000.png ...   root/labels.csv
"""
import csv
import os

import numpy as np

ANOMALIES = ("fast", "against", "object")


def _background(rng, h, w):
    from scipy.ndimage import gaussian_filter
    tex = gaussian_filter(rng.standard_normal((h, w)), 1.5) * 25 + gaussian_filter(rng.standard_normal((h, w)), 6) * 60
    yy = np.linspace(0, 1, h)[:, None]
    bg = 150 + tex - 30 * yy
    bg[int(0.4 * h):int(0.92 * h)] += 25  # lighter walkway
    bg[int(0.4 * h) - 1:int(0.4 * h) + 1] -= 40  # kerb line
    return np.clip(bg, 60, 235)


def _soft_box(xx, yy, x0, x1, y0, y1):
    """Anti-aliased coverage of the box [x0, x1] x [y0, y1] on the pixel grid."""
    cx = np.clip(np.minimum(xx + 0.5, x1) - np.maximum(xx - 0.5, x0), 0, 1)
    cy = np.clip(np.minimum(yy + 0.5, y1) - np.maximum(yy - 0.5, y0), 0, 1)
    return cx * cy


def _draw_person(img, xx, yy, x, y, s, t, tone, facing=1.0):
    """Pedestrian with feet at (x, y), height ``s`` pixels, walking phase ``t``; ``facing`` +1 right / -1 left."""
    bw = 0.28 * s
    a = _soft_box(xx, yy, x - bw / 2, x + bw / 2, y - 0.85 * s, y - 0.38 * s)               # torso
    a = np.maximum(a, _soft_box(xx, yy, x - 0.13 * s, x + 0.13 * s, y - s, y - 0.84 * s))     # head
    a = np.maximum(a, _soft_box(xx, yy, x + facing * 0.12 * s, x + facing * 0.24 * s,
                                y - 0.8 * s, y - 0.55 * s) * 0.6)                            # bag in front
    swing = 0.14 * s * np.sin(t)
    for sgn in (-1, 1):
        lx = x + sgn * swing
        a = np.maximum(a, _soft_box(xx, yy, lx - 0.06 * s, lx + 0.06 * s, y - 0.4 * s, y))   # legs
    img *= 1 - a
    img += a * tone


def _draw_cart(img, xx, yy, x, y, s):
    a = _soft_box(xx, yy, x - 0.6 * s, x + 0.6 * s, y - 0.55 * s, y - 0.1 * s)
    wheels = np.maximum(_soft_box(xx, yy, x - 0.5 * s, x - 0.3 * s, y - 0.12 * s, y),
                        _soft_box(xx, yy, x + 0.3 * s, x + 0.5 * s, y - 0.12 * s, y))
    img *= 1 - a
    img += a * 225
    img *= 1 - wheels
    img += wheels * 20


def _walkers(rng, n_frames, w, h, density):
    """Normal pedestrians: spawn times, lanes, speeds (left-to-right)."""
    out, t = [], -rng.uniform(0, 40)
    while t < n_frames:
        s = rng.uniform(0.2, 0.26) * h
        out.append(dict(t0=t, y=rng.uniform(0.55, 0.9) * h, v=rng.uniform(0.9, 1.3) * w / 64, s=s,
                        tone=rng.uniform(25, 70), phase=rng.uniform(0, 6.28), dir=1.0))
        t += rng.exponential(w / 64 * 60 / density) + 8
    return out


def render_clip(rng, n_frames, size, anomaly=None, density=2.0):
    """Frames ``(n, size, size)`` uint8 and per-frame labels ``(n,)`` int8 for one clip."""
    h = w = size
    bg = _background(np.random.default_rng(1234), h, w)  # one camera: the same scene in every clip
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    people = _walkers(rng, n_frames, w, h, density)
    event = None
    if anomaly is not None:
        s = 0.23 * h
        start = int(rng.integers(n_frames // 4, n_frames // 2))
        speed = {"fast": 4.5, "against": 1.1, "object": 2.5}[anomaly] * w / 64
        event = dict(kind=anomaly, t0=start, y=rng.uniform(0.6, 0.85) * h, v=speed, s=s,
                     tone=rng.uniform(25, 70), phase=0.0, dir=-1.0 if anomaly == "against" else 1.0)
    frames = np.zeros((n_frames, h, w), np.uint8)
    labels = np.zeros(n_frames, np.int8)
    noise = np.random.default_rng(rng.integers(1 << 31))
    for t in range(n_frames):
        img = bg.copy()
        for p in sorted(people, key=lambda p: p["y"]):
            x = -0.3 * p["s"] + (t - p["t0"]) * p["v"]
            if -p["s"] < x < w + p["s"]:
                _draw_person(img, xx, yy, x, p["y"], p["s"], p["phase"] + 0.35 * (t - p["t0"]) * p["v"], p["tone"])
        if event is not None and t >= event["t0"]:
            d = (t - event["t0"]) * event["v"]
            half = 0.65 * event["s"]
            x = -half + d if event["dir"] > 0 else w + half - d
            if -half < x < w + half:
                labels[t] = 1
                if event["kind"] == "object":
                    _draw_cart(img, xx, yy, x, event["y"], event["s"])
                else:
                    _draw_person(img, xx, yy, x, event["y"], event["s"], 0.35 * d, event["tone"], event["dir"])
        img += noise.normal(0, 2.0, img.shape)
        frames[t] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return frames, labels


def _write_clip(folder, frames):
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(os.path.join(folder, f"{i:03d}.png"))


def make_dataset(root, size=64, n_train=6, n_test=6, n_frames=100, seed=0):
    """Write the dataset under ``root`` (see module docstring); returns ``{clip: labels}`` of the test split."""
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        frames, _ = render_clip(rng, n_frames, size)
        _write_clip(os.path.join(root, "training", "frames", f"{i + 1:02d}"), frames)
    labels = {}
    for i in range(n_test):
        name = f"{i + 1:02d}"
        frames, lab = render_clip(rng, n_frames, size, anomaly=ANOMALIES[i % len(ANOMALIES)])
        _write_clip(os.path.join(root, "testing", "frames", name), frames)
        labels[name] = lab
    with open(os.path.join(root, "labels.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip", "frame", "label"])
        for name, lab in labels.items():
            for t in np.flatnonzero(lab):
                w.writerow([name, int(t), 1])
    return labels
