"""Pseudo-anomalies: synthetic abnormal events injected into NORMAL clips, to choose settings without test data.

Two kinds of event, each ``length`` = 15..40 consecutive frames, never overlapping (at least ``gap`` normal
frames between two events); a clip gets ``n_patch`` + ``n_skip`` events where they fit:

``patch``  a moving intruder. A rectangle ``size`` = 20..40 px tall (width 0.5..1 x its height) is cropped from the same
           clip at another time (a frame outside the event) and a random place, then pasted into every frame of
           the event at a position moving in a straight line (uniformly random direction) at ``speed`` =
           2.5..5 x ``walk_speed``. Ped2 pedestrians cover ~1-2 px/frame at 256x256, so ``walk_speed`` = 1.5
           px/frame and the intruder moves 3.75..7.5 px/frame: an object gliding faster than anyone walks (a
           cyclist or cart in Ped2's terms). The crop is the most "active" of ``candidates`` random crops (largest
           mean absolute difference to the previous frame, i.e. likely a pedestrian, not bare pavement). It is
           pasted with a soft edge: alpha ramps linearly from 0 outside to 1 over ``feather`` px inside.
``skip``   abnormal speed of everything: inside the event, frame ``a + j`` is replaced by original frame
           ``a - 1 + s * (j + 1)`` (j = 0..length-1, skip factor ``s`` in ``skip_factors``), so the video runs
           ``s`` times too fast from the frame before the event on; after the event the clip resumes at its own
           frame ``a + length``.

Sizes and speeds are given for 256-pixel-tall frames and scale with the frame height (minimum 4 px). Sources
are always read from the original, unmodified clip. Labels are 1 exactly on the frames an event replaced or
painted on, 0 elsewhere; frames outside events are returned untouched (bit-identical).

The idea follows pseudo-anomaly training and validation in video anomaly detection: abnormal speed by skipping
frames and abnormal appearance by pasting patches (M. Astrid, M. Z. Zaheer, J.-Y. Lee, S.-I. Lee, "Learning
Not to Reconstruct Anomalies", BMVC 2021; M. Astrid, M. Z. Zaheer, S.-I. Lee, "Synthetic Temporal Anomaly
Guided End-to-End Video Anomaly Detection", ICCV Workshops 2021). Here the events are used only to *select*
a score formula on held-out normal training clips (bench/select_score.py), never for training.
"""
import numpy as np

KINDS = ("patch", "skip")


def _as_rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}")


def _place(rng, n, length, span, taken, start_min, gap, tries=200):
    """A start ``a`` with the event [a, a + length) inside [start_min, n) and its source span [a, a + span)
    inside the clip, at least ``gap`` frames away from every interval in ``taken``; None if none is found."""
    hi = n - max(length, span)
    if hi < start_min:
        return None
    for _ in range(tries):
        a = int(rng.integers(start_min, hi + 1))
        if all(a + length + gap <= s or e + gap <= a for s, e in taken):
            return a
    return None


def _feather_mask(h, w, feather):
    """(h, w) float alpha: 1 in the middle, ramping linearly to 1 / (feather + 1) at the border pixels."""
    def ramp(m):
        i = np.arange(m)
        d = np.minimum(i, m - 1 - i) + 1.0
        return np.minimum(d / (feather + 1.0), 1.0)
    return np.minimum(ramp(h)[:, None], ramp(w)[None, :])


def _patch_event(rng, orig, out, a, length, min_len, scale, size_range, speed_range, walk_speed, candidates,
                 feather):
    """Paste one moving intruder into frames a.. of ``out`` (length shortened, not below min_len, so that its
    straight path fits in the frame); returns its event dict, or None."""
    n, H, W = orig.shape[:3]
    ph = int(np.clip(round(rng.uniform(*size_range) * scale), 4, H // 2))
    pw = int(np.clip(round(ph * rng.uniform(0.5, 1.0)), 4, W // 2))
    outside = np.setdiff1d(np.arange(n), np.arange(a, a + length))
    best, best_act = None, -1.0
    for _ in range(candidates):
        t = int(rng.choice(outside))
        y, x = int(rng.integers(0, H - ph + 1)), int(rng.integers(0, W - pw + 1))
        prev = orig[t - 1 if t > 0 else t + 1]
        act = np.abs(orig[t, y:y + ph, x:x + pw].astype(np.float32) - prev[y:y + ph, x:x + pw]).mean()
        if act > best_act:
            best, best_act = (t, y, x), act
    t, y, x = best
    patch = orig[t, y:y + ph, x:x + pw].astype(np.float32)
    speed = rng.uniform(*speed_range) * walk_speed * scale
    for _ in range(100):  # a direction whose straight path fits in the frame; shorten the event if needed
        ang = rng.uniform(0, 2 * np.pi)
        dy, dx = speed * np.sin(ang), speed * np.cos(ang)
        room = [(H - ph) / abs(dy) if abs(dy) > 1e-9 else np.inf, (W - pw) / abs(dx) if abs(dx) > 1e-9 else np.inf]
        steps = min(length - 1, int(np.floor(min(room))))
        if steps >= min(min_len, length) - 1:
            break
    else:
        return None
    length = steps + 1
    y0 = rng.uniform(0, H - ph - abs(dy) * steps) + (abs(dy) * steps if dy < 0 else 0)
    x0 = rng.uniform(0, W - pw - abs(dx) * steps) + (abs(dx) * steps if dx < 0 else 0)
    alpha = _feather_mask(ph, pw, feather)
    if out.ndim == 4:
        alpha = alpha[..., None]
    for j in range(length):
        py = int(np.clip(round(y0 + j * dy), 0, H - ph))
        px = int(np.clip(round(x0 + j * dx), 0, W - pw))
        region = out[a + j, py:py + ph, px:px + pw].astype(np.float32)
        out[a + j, py:py + ph, px:px + pw] = np.clip(np.rint(alpha * patch + (1 - alpha) * region), 0, 255)
    return {"kind": "patch", "start": a, "length": length, "size": [ph, pw], "source_frame": t,
            "speed_px_per_frame": round(float(speed), 3), "direction_deg": round(float(np.degrees(ang)), 1)}


# Named difficulty presets (keyword arguments of inject_pseudo_anomalies). "standard" is the default set used
# since session 4. "hard" (added in session 7, when every optical-flow model scored 98.2 +- 0.05 on the standard
# set): intruders half the size (10..20 px tall at 256 px, i.e. a distant cyclist) gliding only 1.5..3 x walking
# speed, and frame skips of 2 (the video runs twice too fast) instead of 3..4.
PRESETS = {
    "standard": {},
    "hard": {"size": (10, 20), "speed": (1.5, 3.0), "skip_factors": (2,)},
}


def inject_pseudo_anomalies(frames, rng, n_patch=2, n_skip=1, length=(15, 40), size=(20, 40), speed=(2.5, 5.0),
                            walk_speed=1.5, skip_factors=(3, 4), start_min=0, gap=8, candidates=8, feather=3,
                            return_events=False):
    """Inject synthetic anomalous events (module docstring) into one normal clip.

    frames: (n, H, W) or (n, H, W, C) uint8, one clip in time order (not modified);
    rng: ``numpy.random.Generator`` or int seed -- the output is a deterministic function of it;
    n_patch / n_skip: events of each kind to place (fewer when the clip is too short);
    length: (min, max) event length in frames, inclusive; size: (min, max) intruder height in px (at 256 px
    height; width 0.5..1 x height); speed: (min, max) intruder speed in units of
    ``walk_speed`` px/frame (at 256 px height); skip_factors: the skip ``s`` is drawn from these;
    start_min: no event starts before this frame (e.g. the model's clip_len: earlier frames are not scored);
    gap: min normal frames between events; candidates: crops tried per intruder; feather: soft edge in px.

    Returns ``(frames', labels)``: a new uint8 array of the same shape and (n,) int8 labels (1 = frame
    modified by an event); with ``return_events`` also a list of event dicts (kind, start, length, ...)."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim not in (3, 4):
        raise TypeError(f"frames must be a (n, H, W) or (n, H, W, C) uint8 numpy array, got "
                        f"{getattr(frames, 'dtype', type(frames).__name__)} {getattr(frames, 'shape', '')}")
    lo, hi = int(length[0]), int(length[1])
    if not 2 <= lo <= hi:
        raise ValueError(f"length must be (min, max) with 2 <= min <= max, got {length}")
    if not 1 <= float(size[0]) <= float(size[1]):
        raise ValueError(f"size must be (min, max) intruder heights in px with 1 <= min <= max, got {size}")
    if min(skip_factors) < 2:
        raise ValueError(f"skip_factors must all be >= 2, got {skip_factors}")
    rng = _as_rng(rng)
    n, H = frames.shape[:2]
    scale = H / 256.0
    orig, out = frames, frames.copy()
    labels = np.zeros(n, np.int8)
    taken, events = [], []
    for kind in ["skip"] * n_skip + ["patch"] * n_patch:  # skips first: they need the longest source span
        L = int(rng.integers(lo, hi + 1))
        if kind == "skip":
            s = int(rng.choice(skip_factors))
            a = _place(rng, n, L, s * L, taken, start_min, gap)
            if a is None:
                continue
            src = a - 1 + s * np.arange(1, L + 1)
            out[a:a + L] = orig[src]
            ev = {"kind": "skip", "start": a, "length": L, "skip": s}
        else:
            a = _place(rng, n, L, L, taken, start_min, gap)
            if a is None:
                continue
            ev = _patch_event(rng, orig, out, a, L, lo, scale, size, speed, walk_speed, candidates,
                              max(1, round(feather * scale)))
            if ev is None:
                continue
        labels[ev["start"]:ev["start"] + ev["length"]] = 1
        taken.append((ev["start"], ev["start"] + ev["length"]))
        events.append(ev)
    events.sort(key=lambda e: e["start"])
    return (out, labels, events) if return_events else (out, labels)
