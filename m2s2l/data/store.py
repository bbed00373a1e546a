"""FrameStore: every frame of a split decoded and resized ONCE into one uint8 tensor, clips cut by index math.

``frames``: ``(N, C, H, W)`` uint8, all clips concatenated in order; ``starts[i]``/``lengths[i]`` locate clip i.
A training sample is identified by the global index ``t`` of its *target* frame; its input clip is frames
``t-T .. t-1`` of the same clip, so only targets with a full history (position >= T in their clip) are used.
``batch(idx, T)`` gathers ``{"clip": (B, T, C, H, W), "target": (B, C, H, W)[, "flow": (B, 2, H, W)]}`` floats in
[-1, 1] with two fancy-indexing ops — on the GPU when the store lives there (Ped2 at 256x256 gray is 167 MB), so
an epoch is bound by neither JPEG decoding nor Python.

Caching: with ``cache_dir`` the decoded array is kept as ``.npy`` keyed by split, size, channels and a hash of the
file list (paths, sizes, mtimes); a second run loads it in a fraction of a second. Optical flow (target motion
for ``motion_target="flow"``) is computed with OpenCV (DIS or Farneback) between consecutive resized gray
frames, in pixels of the resized frame, and cached the same way; ``flow[t]`` is the motion from t-1 to t
(zero for the first frame of a clip).
"""
import hashlib
import json
import os

import numpy as np
import torch

from .frames import find_clips, read_clip


def _atomic_save_npy(path, arr):
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, arr)
    os.replace(tmp, path)


def _file_list_hash(clips, extra):
    h = hashlib.sha1(repr(extra).encode())
    for c in clips:
        files = c.files if c.kind == "frames" else (c.path,)
        for f in files:
            st = os.stat(f)
            h.update(f"{os.path.abspath(f)}|{st.st_size}|{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]


def gray_u8(frames):
    """(N, C, H, W) uint8 numpy (C = 1 or 3, RGB) -> (N, H, W) uint8: the images optical flow is computed on."""
    if frames.shape[1] == 1:
        return np.ascontiguousarray(frames[:, 0])
    return (0.299 * frames[:, 0] + 0.587 * frames[:, 1] + 0.114 * frames[:, 2]).astype(np.uint8)


def flow_fn(method="dis"):
    """``fn(prev (H, W) uint8, cur (H, W) uint8) -> (2, H, W) float16`` optical flow from ``prev`` to ``cur``
    (OpenCV; "dis" = DIS medium preset, "farneback"). The one definition used for training, evaluation and
    streaming, so a flow model sees the same motion target everywhere."""
    try:
        import cv2
    except ImportError:
        raise ImportError("motion_target='flow' needs OpenCV: pip install opencv-python-headless") from None
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        calc = lambda a, b: dis.calc(a, b, None)  # noqa: E731
    elif method == "farneback":
        calc = lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)  # noqa: E731
    else:
        raise ValueError(f"flow method must be 'dis' or 'farneback', got {method!r}")

    def fn(prev, cur):
        f = calc(np.ascontiguousarray(prev), np.ascontiguousarray(cur))
        return f.transpose(2, 0, 1).astype(np.float16)
    return fn


class FrameStore:
    """Decoded frames of one split. Build with :meth:`load`; move with :meth:`to`."""

    def __init__(self, frames, names, lengths, labels=None, flow=None, source=None):
        if frames.dtype != torch.uint8 or frames.dim() != 4:
            raise TypeError(f"frames must be a (N, C, H, W) uint8 tensor, got {frames.dtype} {tuple(frames.shape)}")
        if sum(lengths) != frames.shape[0]:
            raise ValueError(f"clip lengths sum to {sum(lengths)} but frames has {frames.shape[0]} frames")
        self.frames = frames
        self.names = list(names)
        self.lengths = [int(n) for n in lengths]
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64).tolist()
        self.labels = labels  # {name: (n,) int8} or None
        self.flow = flow      # (N, 2, H, W) float16 tensor or None
        self.source = source

    # ---------------------------------------------------------------- building
    @classmethod
    def load(cls, root, split, size, channels, cache_dir=None, workers=8, verbose=False, names=None):
        """Decode every clip of ``root``/``split`` (see :func:`m2s2l.data.frames.find_clips`) at ``size``
        (int or (H, W)) with ``channels`` (1 gray | 3 RGB) into a store, via the ``.npy`` cache when given.
        ``names``: only these clips (in the split's order); a name not in the split raises ValueError."""
        clips = find_clips(root, split)
        if names is not None:
            missing = sorted(set(names) - {c.name for c in clips})
            if missing:
                raise ValueError(f"clips {missing} not found in {root!r} (clips there: {[c.name for c in clips]})")
            clips = [c for c in clips if c.name in set(names)]
        hw = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        key = None
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)
            digest = _file_list_hash(clips, (split, hw, channels))
            key = os.path.join(cache_dir, f"{split or 'clips'}_{hw[0]}x{hw[1]}_c{channels}_{digest}")
            if os.path.isfile(key + ".npy") and os.path.isfile(key + ".json"):
                meta = json.load(open(key + ".json"))
                frames = torch.from_numpy(np.load(key + ".npy"))
                store = cls(frames, meta["names"], meta["lengths"], source=os.path.abspath(root))
                store._cache_key = key
                return store
        arrays = []
        for i, clip in enumerate(clips):
            a = read_clip(clip, hw, channels, workers=workers)
            arrays.append(a)
            if verbose:
                print(f"\rdecoding {split or root}: clip {i + 1}/{len(clips)}", end="", flush=True)
        if verbose:
            print()
        frames = np.concatenate(arrays)
        names, lengths = [c.name for c in clips], [len(a) for a in arrays]
        if key:
            _atomic_save_npy(key + ".npy", frames)
            with open(key + ".json.tmp", "w") as f:
                json.dump({"names": names, "lengths": lengths, "root": os.path.abspath(root)}, f)
            os.replace(key + ".json.tmp", key + ".json")
        store = cls(torch.from_numpy(frames), names, lengths, source=os.path.abspath(root))
        store._cache_key = key
        return store

    def attach_labels(self, labels):
        """Set per-frame labels ``{name: (n,) 0/1}`` after checking names and lengths."""
        for name, n in zip(self.names, self.lengths):
            if name not in labels:
                raise ValueError(f"labels lack clip {name!r}")
            if len(labels[name]) != n:
                raise ValueError(f"labels for clip {name!r} have {len(labels[name])} frames, the clip has {n}")
        self.labels = {name: np.asarray(labels[name], np.int8) for name in self.names}
        return self

    def compute_flow(self, method="dis", verbose=False):
        """Optical flow ``(N, 2, H, W)`` float16 between consecutive frames of each clip (OpenCV, cached)."""
        key = getattr(self, "_cache_key", None)
        path = f"{key}_flow_{method}.npy" if key else None
        if path and os.path.isfile(path):
            self.flow = torch.from_numpy(np.load(path))
            return self
        fn = flow_fn(method)
        gray = gray_u8(self.frames.cpu().numpy())
        out = np.zeros((gray.shape[0], 2) + gray.shape[1:], np.float16)
        for ci, (s, n) in enumerate(zip(self.starts, self.lengths)):
            for t in range(s + 1, s + n):
                out[t] = fn(gray[t - 1], gray[t])
            if verbose:
                print(f"\rflow ({method}): clip {ci + 1}/{len(self.names)}", end="", flush=True)
        if verbose:
            print()
        if path:
            _atomic_save_npy(path, out)
        self.flow = torch.from_numpy(out)
        return self

    # ---------------------------------------------------------------- views
    def subset(self, names):
        """A store holding only clips ``names`` (in this store's order); frames are copied."""
        keep = [i for i, n in enumerate(self.names) if n in set(names)]
        missing = set(names) - set(self.names)
        if missing:
            raise ValueError(f"unknown clips {sorted(missing)}")
        sl = [slice(self.starts[i], self.starts[i] + self.lengths[i]) for i in keep]
        frames = torch.cat([self.frames[s] for s in sl]) if keep else self.frames[:0]
        flow = torch.cat([self.flow[s] for s in sl]) if self.flow is not None and keep else None
        labels = {self.names[i]: self.labels[self.names[i]] for i in keep} if self.labels else None
        return FrameStore(frames, [self.names[i] for i in keep], [self.lengths[i] for i in keep],
                          labels, flow, self.source)

    def to(self, device, pin=False):
        self.frames = self.frames.to(device)
        if self.flow is not None:
            self.flow = self.flow.to(device)
        if pin and self.frames.device.type == "cpu" and torch.cuda.is_available():
            self.frames = self.frames.pin_memory()
        return self

    @property
    def device(self):
        return self.frames.device

    def __len__(self):
        return int(self.frames.shape[0])

    def clip_of(self, name):
        i = self.names.index(name)
        return self.starts[i], self.lengths[i]

    def target_indices(self, clip_len, names=None):
        """Global indices of frames with a full history of ``clip_len`` frames (position >= clip_len)."""
        out = []
        for name, s, n in zip(self.names, self.starts, self.lengths):
            if names is None or name in names:
                out.append(np.arange(s + clip_len, s + n, dtype=np.int64))
        if not out:
            return torch.zeros(0, dtype=torch.long)
        return torch.from_numpy(np.concatenate(out))

    def batch(self, idx, clip_len, device=None):
        """Gather samples whose target frames are ``idx`` (LongTensor of global indices) into a batch dict on
        ``device`` (default: the store's device); floats in [-1, 1]."""
        device = torch.device(device) if device is not None else self.device
        idx = idx.to(self.device)
        offs = torch.arange(-clip_len, 0, device=self.device)
        clip = self.frames[idx[:, None] + offs]
        target = self.frames[idx]
        flow = self.flow[idx] if self.flow is not None else None
        if device != self.device:
            nb = device.type == "cuda"
            clip, target = clip.to(device, non_blocking=nb), target.to(device, non_blocking=nb)
            flow = flow.to(device, non_blocking=nb) if flow is not None else None
        out = {"clip": clip.float().mul_(1 / 127.5).sub_(1.0), "target": target.float().mul_(1 / 127.5).sub_(1.0)}
        if flow is not None:
            out["flow"] = flow.float()
        return out


def choose_val_clips(names, n_val):
    """``n_val`` clips spread evenly over ``names`` (deterministic): positions round((i + 0.5) * len / n_val)."""
    if n_val <= 0:
        return []
    if n_val >= len(names):
        raise ValueError(f"val_clips={n_val} must be smaller than the number of training clips ({len(names)})")
    pos = sorted({min(len(names) - 1, int((i + 0.5) * len(names) / n_val)) for i in range(n_val)})
    return [names[p] for p in pos]
