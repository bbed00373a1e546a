"""Frame-level ground truth in the formats the literature distributes (1 = anomalous, 0 = normal).

* FFP ``.mat`` (ped2.mat, avenue.mat, shanghaitech.mat): key ``gt``, one cell per clip holding a
  ``(2, K)`` array of 1-indexed inclusive ``[start; end]`` anomalous intervals.
* UCSD/Avenue per-video pixel volumes ``<N>_label.mat`` with key ``volLabel`` (a frame is anomalous when any of
  its pixels is).
* MNAD ``frame_labels_<name>.npy``: shape ``(1, N)`` or ``(N,)``, all test clips concatenated in clip order.
* ShanghaiTech ``test_frame_mask/<clip>.npy``: one 0/1 array per clip.
* CSV with header ``clip,frame,label`` (frame = 0-based index within the clip); unlisted frames are normal.

``load_labels(source, clips, lengths)`` returns ``{clip_name: int8 array of that clip's length}`` and checks
every length; ``find_label_source(root)`` auto-detects a file next to the data root.
"""
import csv
import glob
import os

import numpy as np

from .frames import natural_key


def _check_len(name, labels, n, source):
    if len(labels) != n:
        raise ValueError(f"labels for clip {name!r} from {source!r} have {len(labels)} frames but the clip has "
                         f"{n} frames")


def labels_from_intervals(intervals, n, name="?", source="?"):
    """Per-frame labels for ``n`` frames from 1-indexed inclusive ``[[start, end], ...]`` intervals."""
    lab = np.zeros(n, np.int8)
    for start, end in intervals:
        start, end = int(start), int(end)
        if not 1 <= start <= end <= n:
            raise ValueError(f"interval [{start}, {end}] for clip {name!r} in {source!r} is outside 1..{n}")
        lab[start - 1:end] = 1
    return lab


def _load_mat(path, names, lengths):
    from scipy.io import loadmat
    m = loadmat(path)
    if "volLabel" in m:  # one pixel volume per file: only valid for a single clip
        raise ValueError(f"{path!r} is a per-video pixel volume (volLabel); pass the folder holding all "
                         "<N>_label.mat files instead")
    if "gt" not in m:
        raise ValueError(f"{path!r} has no 'gt' key (keys: {sorted(k for k in m if not k.startswith('__'))})")
    cells = np.asarray(m["gt"], dtype=object).reshape(-1)
    if len(cells) != len(names):
        raise ValueError(f"{path!r} holds ground truth for {len(cells)} clips but the data has {len(names)} clips")
    out = {}
    for name, n, cell in zip(names, lengths, cells):
        arr = np.asarray(cell, dtype=np.int64)
        if arr.size == 0:
            out[name] = np.zeros(n, np.int8)
            continue
        if arr.ndim == 1:
            arr = arr.reshape(2, -1)
        if arr.shape[0] != 2:
            raise ValueError(f"{path!r}: ground truth for clip {name!r} must be (2, K) [start; end] rows, got "
                             f"shape {arr.shape}")
        out[name] = labels_from_intervals(arr.T, n, name, path)
    return out


def _load_concat_npy(path, names, lengths):
    arr = np.load(path).reshape(-1)
    total = int(sum(lengths))
    if arr.size != total:
        raise ValueError(f"{path!r} has {arr.size} labels but the {len(names)} clips have {total} frames in total")
    out, off = {}, 0
    for name, n in zip(names, lengths):
        out[name] = (arr[off:off + n] != 0).astype(np.int8)
        off += n
    return out


def _load_dir(path, names, lengths):
    out = {}
    for name, n in zip(names, lengths):
        npy = os.path.join(path, f"{name}.npy")
        mat = os.path.join(path, f"{name}_label.mat")
        if not os.path.isfile(mat):
            mat = os.path.join(path, f"{int(name)}_label.mat") if name.isdigit() else mat
        if os.path.isfile(npy):
            lab = (np.load(npy).reshape(-1) != 0).astype(np.int8)
            src = npy
        elif os.path.isfile(mat):
            from scipy.io import loadmat
            vol = loadmat(mat)["volLabel"]
            lab = np.array([int(np.asarray(v).any()) for v in np.asarray(vol, dtype=object).reshape(-1)], np.int8)
            src = mat
        else:
            raise FileNotFoundError(f"no labels for clip {name!r} in {path!r} (expected {name}.npy or "
                                    f"{name}_label.mat)")
        _check_len(name, lab, n, src)
        out[name] = lab
    return out


def _load_csv(path, names, lengths):
    out = {name: np.zeros(n, np.int8) for name, n in zip(names, lengths)}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"clip", "frame", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path!r} must have a header with columns clip,frame,label; missing {sorted(missing)}")
        for i, row in enumerate(reader, start=2):
            clip, frame = row["clip"].strip(), int(row["frame"])
            if clip not in out:
                raise ValueError(f"{path!r} line {i}: unknown clip {clip!r} (clips: {names[:5]}...)")
            if not 0 <= frame < len(out[clip]):
                raise ValueError(f"{path!r} line {i}: frame {frame} outside 0..{len(out[clip]) - 1} of clip {clip!r}")
            out[clip][frame] = int(float(row["label"]) != 0)
    return out


def load_labels(source, names, lengths):
    """Per-frame 0/1 labels ``{name: (n,) int8}`` for clips ``names`` with frame counts ``lengths``.

    ``source``: a ``.mat`` (FFP ``gt``), ``.npy`` (MNAD, concatenated), ``.csv`` (clip,frame,label) file, or a
    folder of per-clip ``<clip>.npy`` / ``<N>_label.mat`` files (ShanghaiTech ``test_frame_mask``, UCSD/Avenue)."""
    names, lengths = list(names), [int(n) for n in lengths]
    if len(names) != len(lengths):
        raise ValueError(f"names ({len(names)}) and lengths ({len(lengths)}) must have the same length")
    if os.path.isdir(source):
        return _load_dir(source, names, lengths)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"label file {source!r} does not exist")
    ext = os.path.splitext(source)[1].lower()
    if ext == ".mat":
        return _load_mat(source, names, lengths)
    if ext == ".npy":
        return _load_concat_npy(source, names, lengths)
    if ext == ".csv":
        return _load_csv(source, names, lengths)
    raise ValueError(f"unsupported label file {source!r}: expected .mat, .npy, .csv or a folder")


def find_label_source(root, split="testing"):
    """Auto-detect ground truth for ``root``: ``<split>/test_frame_mask/``, ``frame_labels_*.npy``, ``*.mat``
    with a ``gt`` key, ``labels.csv`` — next to the data root (or in ``root/<split>``). None when absent."""
    for base in (root, os.path.join(root, split)):
        mask = os.path.join(base, "test_frame_mask")
        if os.path.isdir(mask):
            return mask
    for base in (root, os.path.join(root, split)):
        npys = sorted(glob.glob(os.path.join(base, "frame_labels_*.npy")), key=natural_key)
        if npys:
            return npys[0]
        for mat in sorted(glob.glob(os.path.join(base, "*.mat")), key=natural_key):
            try:
                from scipy.io import whosmat
                if any(v[0] == "gt" for v in whosmat(mat)):
                    return mat
            except Exception:
                continue
        for name in ("labels.csv", "frame_labels.csv"):
            if os.path.isfile(os.path.join(base, name)):
                return os.path.join(base, name)
    return None
