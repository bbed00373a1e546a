"""Video input and output of ``m2s2l score``: frame sources (video file, frames folder, camera, URL), the overlay
MP4, and the bounded-memory score curve PNG. The scoring itself is ``m2s2l.engine.stream``."""
import collections
import csv
import os
import sys

import numpy as np

from m2s2l.data.frames import IMAGE_EXTS, _cv2, _list_images


# ---- frame sources --------------------------------------------------------------------------------------------
class FrameSource:
    """Iterate ``(index, HxWx3 uint8 RGB frame)`` of a video file, a frames folder, a camera index or a URL.

    Unreadable frames are skipped (``self.skipped`` counts them, a warning is printed); ``self.total`` is the
    frame count for files (None for live sources); ``self.fps`` the source frame rate (25 if unknown)."""

    def __init__(self, spec, max_failures=50):
        self.spec, self.skipped, self.max_failures, self.fps, self.total = spec, 0, max_failures, 25.0, None
        self.files = self.cap = None
        self.live = False
        if os.path.isdir(spec):
            self.files = _list_images(spec)
            if not self.files:
                raise ValueError(f"folder {spec!r} holds no frame images ({', '.join(IMAGE_EXTS)})")
            self.total = len(self.files)
            return
        cv2 = _cv2()
        self.live = live = spec.isdigit() or "://" in spec
        if not live and not os.path.isfile(spec):
            raise FileNotFoundError(f"input {spec!r} is not a file, a folder, a camera index or a URL")
        self.cap = cv2.VideoCapture(int(spec) if spec.isdigit() else spec)
        if not self.cap.isOpened():
            raise ValueError(f"cannot open {spec!r} as a video (not a video, or a codec OpenCV lacks)")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else 25.0
        if not live:
            n = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.total = n if n > 0 else None

    def _warn(self, i, why):
        self.skipped += 1
        print(f"warning: skipped frame {i} of {self.spec!r}: {why}", file=sys.stderr, flush=True)

    def __iter__(self):
        if self.files is not None:
            from PIL import Image
            for i, p in enumerate(self.files):
                try:
                    with Image.open(p) as im:
                        yield i, np.asarray(im.convert("RGB"), dtype=np.uint8)
                except Exception as e:  # PIL raises many types for truncated / non-image files
                    self._warn(i, f"{type(e).__name__}: {e}")
            return
        cv2 = _cv2()
        i, fails = 0, 0
        try:
            while True:
                ok, frame = self.cap.read()
                if not ok or frame is None:
                    if not self.live and (self.total is None or i >= self.total):
                        break  # end of file
                    fails += 1
                    if fails > self.max_failures:
                        break  # end of stream (or a stream that stopped delivering)
                    self._warn(i, "decoder returned no frame")
                    i += 1
                    continue
                fails = 0
                if frame.ndim == 2:
                    frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
                yield i, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                i += 1
        finally:
            self.cap.release()


# ---- outputs ---------------------------------------------------------------------------------------------------
class Overlay:
    """Overlay MP4 (OpenCV ``mp4v``): the frame | the frame with the error heatmap, a score strip below with the
    threshold line, and a red border + "ALERT" while the alert is on. Heatmap colours: error / ``err_scale``
    where err_scale is a running 99th percentile-ish maximum (decays slowly), so colours are comparable in time."""

    def __init__(self, path, fps, height=240, strip=60, history=200):
        self.path, self.fps, self.h, self.strip, self.history = path, fps, height, strip, history
        self.writer, self.scores, self.err_scale = None, collections.deque(maxlen=history), 1e-6

    def add(self, frame, res, threshold):
        cv2 = _cv2()
        h = self.h
        w = max(16, int(round(frame.shape[1] * h / frame.shape[0])) // 2 * 2)
        img = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)[..., ::-1]  # BGR for OpenCV
        img = np.ascontiguousarray(img if img.ndim == 3 else np.repeat(img[..., None], 3, -1))
        err = res["error_map"]
        self.err_scale = max(float(np.max(err)), 0.98 * self.err_scale)
        heat = cv2.applyColorMap(np.clip(err / self.err_scale * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
        heat = cv2.addWeighted(img, 0.5, cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR), 0.5, 0)
        self.scores.append(res["score"])
        canvas = np.zeros((h + self.strip, 2 * w, 3), np.uint8)
        canvas[:h, :w], canvas[:h, w:] = img, heat
        s = np.asarray(self.scores)
        lo, hi = (min(s.min(), threshold), max(s.max(), threshold)) if threshold is not None else (s.min(), s.max())
        span = max(hi - lo, 1e-6)
        ys = (h + self.strip - 4 - (s - lo) / span * (self.strip - 8)).astype(np.int32)
        xs = np.linspace(0, 2 * w - 1, self.history)[-len(s):].astype(np.int32)
        cv2.polylines(canvas, [np.stack([xs, ys], 1)], False, (255, 255, 255), 1)
        if threshold is not None:
            ty = int(h + self.strip - 4 - (threshold - lo) / span * (self.strip - 8))
            cv2.line(canvas, (0, ty), (2 * w - 1, ty), (0, 165, 255), 1)
        label = f"score {res['score']:.2f}" + ("" if np.isnan(res["normalised"]) else f"  z {res['normalised']:.2f}")
        cv2.putText(canvas, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        if res["alert"]:
            cv2.rectangle(canvas, (0, 0), (2 * w - 1, h - 1), (0, 0, 255), 3)
            cv2.putText(canvas, "ALERT", (w - 30, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 255), 2)
        if self.writer is None:
            self.writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                          (canvas.shape[1], canvas.shape[0]))
        self.writer.write(canvas)

    def close(self):
        if self.writer is not None:
            self.writer.release()


class ScoreEnvelope:
    """Bounded summary of a score curve of any length: at most ``2 * bins`` bins of ``step`` consecutive rows,
    each keeping (first frame, min score, max score, any alert); when full, neighbouring bins merge and ``step``
    doubles. Exact (one row per bin) up to ``2 * bins`` rows, so a 24 h stream plots in constant memory."""

    def __init__(self, bins=2000):
        self.bins, self.step, self.n = int(bins), 1, 0
        self.rows = []   # [frame, lo, hi, alert] per bin

    def add(self, frame, score, alert):
        if self.n % self.step:
            b = self.rows[-1]
            b[1], b[2], b[3] = min(b[1], score), max(b[2], score), b[3] or alert
        else:
            if len(self.rows) == 2 * self.bins:
                r = self.rows
                self.rows = [[a[0], min(a[1], b[1]), max(a[2], b[2]), a[3] or b[3]] for a, b in zip(r[::2], r[1::2])]
                self.step *= 2
            self.rows.append([frame, score, score, alert])
        self.n += 1

    def arrays(self):
        a = np.array(self.rows, dtype=np.float64).reshape(-1, 4)
        return a[:, 0], a[:, 1], a[:, 2], a[:, 3].astype(bool)


def plot_scores(csv_path, png_path, threshold=None, bins=2000):
    """Score curve PNG from scores.csv, read back row by row into a ``ScoreEnvelope`` (memory bounded by
    ``bins``, not by the stream length; long streams show the per-bin min-max band)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    env = ScoreEnvelope(bins)
    with open(csv_path, newline="") as f:
        for r in csv.DictReader(f):
            env.add(int(r["frame"]), float(r["score"]), r["alert"] == "1")
    frame, lo, hi, alert = env.arrays()
    fig, ax = plt.subplots(figsize=(10, 3))
    if env.n:
        if env.step > 1:
            ax.fill_between(frame, lo, hi, color="tab:blue", alpha=0.35, lw=0,
                            label=f"raw score (min-max of {env.step} frames)")
        ax.plot(frame, hi, lw=1, color="tab:blue", label="raw score" if env.step == 1 else None)
        if alert.any():
            ax.fill_between(frame, lo.min(), hi.max(), where=alert, color="tab:red", alpha=0.2, lw=0, label="alert")
    if threshold is not None:
        ax.axhline(threshold, color="tab:orange", lw=1, ls="--", label="calibrated threshold")
    ax.set_xlabel("frame")
    ax.set_ylabel("raw score (dB)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
