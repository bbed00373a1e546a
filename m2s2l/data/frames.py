"""Finding clips on disk and decoding them into uint8 arrays.

A *clip* is either a folder of frame images (``<clip>/<frame>.{jpg,png,tif,bmp}``, sorted numerically) or a
video file (``.avi/.mp4/...``, read with OpenCV, an optional dependency). ``find_clips(root, split)`` accepts
the FFP/MNAD layouts::

    root/<split>/frames/<clip>/000.jpg      Ped2, Avenue, ShanghaiTech testing (FFP / MNAD distributions)
    root/<split>/videos/<clip>.avi          ShanghaiTech training
    root/<split>/<clip>/000.jpg  or  root/<split>/<clip>.avi
    root/<clip>/...                         (split=None: ``root`` itself holds the clips)

``read_clip(clip, size, channels)`` decodes and resizes every frame of one clip to ``(n, C, H, W)`` uint8.
Every failure names the offending folder or file.
"""
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
VIDEO_EXTS = (".avi", ".mp4", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".webm")


def natural_key(name):
    """Sort key that orders embedded numbers numerically: ``2.jpg < 10.jpg``, ``01_0014 < 01_0100``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


@dataclass
class Clip:
    """One clip on disk: ``name`` (folder or file stem), ``path``, ``kind`` ("frames" | "video") and, for
    frame folders, the sorted frame file paths."""
    name: str
    path: str
    kind: str
    files: tuple = ()

    def __len__(self):
        if self.kind == "frames":
            return len(self.files)
        return video_frame_count(self.path)


def _list_images(folder):
    names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS) and not n.startswith(".")]
    return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


def _clips_in(folder):
    """Clips directly inside ``folder``: sub-folders holding images, and video files."""
    clips = []
    for name in sorted(os.listdir(folder), key=natural_key):
        if name.startswith("."):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            files = _list_images(path)
            if not files:
                if any(os.path.isdir(os.path.join(path, n)) for n in os.listdir(path)):
                    continue  # a container folder (e.g. 'frames'), not a clip
                raise ValueError(f"empty clip: folder {path!r} holds no frame images ({', '.join(IMAGE_EXTS)})")
            clips.append(Clip(name, path, "frames", tuple(files)))
        elif name.lower().endswith(VIDEO_EXTS):
            clips.append(Clip(os.path.splitext(name)[0], path, "video"))
    return clips


def find_clips(root, split=None):
    """List the clips of ``root`` (split=None) or of ``root/<split>`` in natural order.

    Raises FileNotFoundError naming every location tried when no clip is found."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data root {root!r} does not exist or is not a folder")
    base = root if split is None else os.path.join(root, split)
    candidates = [os.path.join(base, "frames"), os.path.join(base, "videos"), base]
    if split is not None:
        candidates.append(os.path.join(root, f"{split}_videos"))
    for cand in candidates:
        if os.path.isdir(cand):
            clips = _clips_in(cand)
            if clips:
                return clips
    raise FileNotFoundError(f"no clips found for split {split!r} under {root!r}; looked for clip folders of "
                            f"images or video files in: {', '.join(candidates)}")


def _target_hw(size):
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


def _read_image(path, hw, channels):
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (hw[1], hw[0]):
                im = im.resize((hw[1], hw[0]), Image.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
    except Exception as e:  # PIL raises many types for truncated / non-image files
        raise ValueError(f"cannot read frame {path!r}: {type(e).__name__}: {e}") from None
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError("reading video files needs OpenCV: pip install opencv-python-headless "
                          "(or pip install 'm2s2l[video]'); frame folders work without it") from None
    return cv2


def _open_video(path):
    """(cv2, an opened VideoCapture) or ValueError naming the file."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise ValueError(f"cannot open video {path!r} (not a video, or a codec OpenCV lacks)")
    return cv2, cap


def video_frame_count(path):
    cv2, cap = _open_video(path)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return n


def iter_video(path):
    """Yield the frames of a video file as HxWx3 uint8 RGB arrays (OpenCV)."""
    cv2, cap = _open_video(path)
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def to_model_frame(frame, size, channels):
    """Resize an HxW or HxWx3 uint8 frame to ``(C, H, W)`` uint8 with PIL (bilinear, antialiased)."""
    from PIL import Image
    hw = _target_hw(size)
    im = Image.fromarray(frame)
    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != (hw[1], hw[0]):
        im = im.resize((hw[1], hw[0]), Image.BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def read_clip(clip, size, channels, workers=8):
    """Decode all frames of ``clip`` to a ``(n, channels, H, W)`` uint8 array, ``size`` = int or (H, W).

    Frame folders decode in a thread pool (PIL releases the GIL while decoding)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    hw = _target_hw(size)
    if clip.kind == "frames":
        if workers > 1 and len(clip.files) > 8:
            with ThreadPoolExecutor(workers) as ex:
                frames = list(ex.map(lambda p: _read_image(p, hw, channels), clip.files))
        else:
            frames = [_read_image(p, hw, channels) for p in clip.files]
    else:
        frames = [to_model_frame(f, hw, channels) for f in iter_video(clip.path)]
    if not frames:
        raise ValueError(f"empty clip: {clip.path!r} yielded no frames")
    return np.stack(frames)
