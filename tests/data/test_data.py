"""Loaders, ground-truth formats, validation errors and the uint8 frame store, on small synthetic files."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from m2s2l.data import FrameStore, choose_val_clips, find_clips, find_label_source, load_labels, read_clip
from m2s2l.data.labels import labels_from_intervals


def _write_clip(folder, n, ext=".png", size=(12, 10), start=0, names=None):
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        a = np.full((size[0], size[1], 3), (i * 10 + start) % 256, np.uint8)
        a[0, 0] = (255, 0, 0)
        name = names[i] if names else f"{i}{ext}"
        Image.fromarray(a).save(os.path.join(folder, name))


@pytest.fixture
def ds(tmp_path):
    """root/{training,testing}/frames/<clip>/ with png, jpg and tif clips; test clips of 5, 7, 6 frames."""
    root = tmp_path / "ds"
    _write_clip(root / "training/frames/01", 6, ".png")
    _write_clip(root / "training/frames/02", 5, ".jpg")
    _write_clip(root / "testing/frames/01", 5, ".tif")
    _write_clip(root / "testing/frames/02", 7, ".png")
    # numeric sort: 2 < 10 (lexical order would put 10 first)
    _write_clip(root / "testing/frames/10", 6, names=[f"{i}.png" for i in (0, 1, 2, 10, 11, 3)])
    return str(root)


def test_find_clips_layout_and_natural_order(ds):
    tr, te = find_clips(ds, "training"), find_clips(ds, "testing")
    assert [c.name for c in tr] == ["01", "02"] and [len(c) for c in tr] == [6, 5]
    assert [c.name for c in te] == ["01", "02", "10"]
    assert [os.path.basename(f) for f in te[2].files] == ["0.png", "1.png", "2.png", "3.png", "10.png", "11.png"]
    # split=None: the folder itself holds the clips
    assert [c.name for c in find_clips(os.path.join(ds, "testing", "frames"))] == ["01", "02", "10"]


def test_read_clip_gray_rgb_resize(ds):
    clip = find_clips(ds, "training")[0]
    g = read_clip(clip, 8, 1)
    rgb = read_clip(clip, (8, 6), 3)
    assert g.shape == (6, 1, 8, 8) and g.dtype == np.uint8
    assert rgb.shape == (6, 3, 8, 6)
    assert abs(int(g[3, 0, 4, 4]) - 30) <= 1  # flat frame value i*10 survives resizing


def test_missing_and_empty_errors(tmp_path, ds):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_clips(str(tmp_path / "nope"), "training")
    with pytest.raises(FileNotFoundError, match="no clips found for split 'validation'"):
        find_clips(ds, "validation")
    os.makedirs(os.path.join(ds, "training", "frames", "03"))
    with pytest.raises(ValueError, match="empty clip.*03"):
        find_clips(ds, "training")


def test_corrupt_frame_names_file(ds):
    bad = os.path.join(ds, "training", "frames", "02", "3.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(ValueError, match="cannot read frame .*02.*3.jpg"):
        FrameStore.load(ds, "training", 8, 1)


def test_video_clips(tmp_path):
    cv2 = pytest.importorskip("cv2")
    root = tmp_path / "vid" / "training" / "videos"
    os.makedirs(root)
    path = str(root / "a.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (16, 12))
    if not w.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG avi")
    for i in range(9):
        w.write(np.full((12, 16, 3), i * 20, np.uint8))
    w.release()
    clips = find_clips(str(tmp_path / "vid"), "training")
    assert [(c.name, c.kind) for c in clips] == [("a", "video")]
    arr = read_clip(clips[0], 8, 1)
    assert arr.shape == (9, 1, 8, 8)
    assert abs(int(arr[5, 0, 4, 4]) - 100) <= 4
    bad = str(root / "b.avi")
    with open(bad, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(ValueError, match="b.avi"):
        FrameStore.load(str(tmp_path / "vid"), "training", 8, 1)


# ---------------------------------------------------------------- ground truth formats
NAMES, LENS = ["01", "02", "10"], [5, 7, 6]
EXPECT = {"01": [0, 1, 1, 0, 0], "02": [0, 0, 0, 0, 0, 1, 1], "10": [1, 1, 0, 0, 1, 1]}


def _check(labels):
    assert {k: v.tolist() for k, v in labels.items()} == EXPECT
    assert all(v.dtype == np.int8 for v in labels.values())


def test_labels_ffp_mat(tmp_path):
    from scipy.io import savemat
    gt = np.empty((1, 3), dtype=object)
    gt[0, 0] = np.array([[2], [3]], np.uint8)
    gt[0, 1] = np.array([[6], [7]], np.uint8)
    gt[0, 2] = np.array([[1, 5], [2, 6]], np.uint8)  # two intervals: columns [start; end]
    savemat(tmp_path / "toy.mat", {"gt": gt})
    _check(load_labels(str(tmp_path / "toy.mat"), NAMES, LENS))
    assert find_label_source(str(tmp_path)) == str(tmp_path / "toy.mat")
    with pytest.raises(ValueError, match=r"\[6, 7\] for clip '02'.*outside 1..6"):
        load_labels(str(tmp_path / "toy.mat"), NAMES, [5, 6, 6])
    with pytest.raises(ValueError, match="3 clips but the data has 2"):
        load_labels(str(tmp_path / "toy.mat"), NAMES[:2], LENS[:2])


def test_labels_mnad_npy(tmp_path):
    flat = np.concatenate([EXPECT[n] for n in NAMES])[None]
    np.save(tmp_path / "frame_labels_toy.npy", flat)
    _check(load_labels(str(tmp_path / "frame_labels_toy.npy"), NAMES, LENS))
    assert find_label_source(str(tmp_path)).endswith("frame_labels_toy.npy")
    with pytest.raises(ValueError, match="has 18 labels but the 3 clips have 19 frames"):
        load_labels(str(tmp_path / "frame_labels_toy.npy"), NAMES, [5, 7, 7])


def test_labels_shanghaitech_mask_dir(tmp_path):
    mask = tmp_path / "testing" / "test_frame_mask"
    os.makedirs(mask)
    for n in NAMES:
        np.save(mask / f"{n}.npy", np.array(EXPECT[n]))
    assert find_label_source(str(tmp_path)) == str(mask)
    _check(load_labels(str(mask), NAMES, LENS))
    with pytest.raises(ValueError, match="clip '02'.*7 frames but the clip has 8"):
        load_labels(str(mask), NAMES, [5, 8, 6])


def test_labels_pixel_volumes(tmp_path):
    from scipy.io import savemat
    for i, n in enumerate(NAMES):
        vol = np.empty((1, LENS[i]), dtype=object)
        for t in range(LENS[i]):
            m = np.zeros((4, 4), np.uint8)
            m[1, 2] = EXPECT[n][t]
            vol[0, t] = m
        savemat(tmp_path / f"{n}_label.mat", {"volLabel": vol})
    _check(load_labels(str(tmp_path), NAMES, LENS))


def test_labels_csv(tmp_path):
    p = tmp_path / "labels.csv"
    rows = ["clip,frame,label"] + [f"{n},{t},1" for n in NAMES for t, v in enumerate(EXPECT[n]) if v]
    p.write_text("\n".join(rows) + "\n")
    _check(load_labels(str(p), NAMES, LENS))
    assert find_label_source(str(tmp_path)) == str(p)
    p.write_text("clip,frame,label\n01,9,1\n")
    with pytest.raises(ValueError, match="frame 9 outside 0..4"):
        load_labels(str(p), NAMES, LENS)


def test_intervals_are_one_indexed_inclusive():
    assert labels_from_intervals([[1, 1], [4, 5]], 5).tolist() == [1, 0, 0, 1, 1]


# ---------------------------------------------------------------- store
def test_store_batch_index_arithmetic(ds, tmp_path):
    st = FrameStore.load(ds, "testing", 8, 1, cache_dir=str(tmp_path / "cache"))
    assert len(st) == 18 and st.names == ["01", "02", "10"] and st.starts == [0, 5, 12]
    T = 2
    idx = st.target_indices(T)
    assert idx.tolist() == [2, 3, 4, 7, 8, 9, 10, 11, 14, 15, 16, 17]
    b = st.batch(idx[[0, 3]], T)
    assert b["clip"].shape == (2, T, 1, 8, 8) and b["target"].shape == (2, 1, 8, 8)
    raw = st.frames.float() / 127.5 - 1
    torch.testing.assert_close(b["clip"][1], raw[5:7])  # clip 02, frames 0,1 -> target 2
    torch.testing.assert_close(b["target"][0], raw[2])
    assert b["clip"].min() >= -1 and b["clip"].max() <= 1
    # the .npy cache returns identical frames, without decoding
    st2 = FrameStore.load(ds, "testing", 8, 1, cache_dir=str(tmp_path / "cache"))
    assert torch.equal(st.frames, st2.frames) and st2.lengths == st.lengths
    sub = st.subset(["10"])
    assert sub.names == ["10"] and torch.equal(sub.frames, st.frames[12:])
    only = FrameStore.load(ds, "testing", 8, 1, names=["10", "01"])  # decodes just these, in the split's order
    assert only.names == ["01", "10"] and torch.equal(only.frames, torch.cat([st.frames[:5], st.frames[12:]]))
    with pytest.raises(ValueError, match="'99'"):
        FrameStore.load(ds, "testing", 8, 1, names=["01", "99"])
    assert choose_val_clips([f"{i}" for i in range(16)], 2) == ["4", "12"]


def test_store_optical_flow(ds):
    pytest.importorskip("cv2")
    st = FrameStore.load(ds, "training", 16, 1).compute_flow("farneback")
    assert st.flow.shape == (11, 2, 16, 16) and st.flow.dtype == torch.float16
    assert torch.all(st.flow[0] == 0) and torch.all(st.flow[6] == 0)  # first frame of each clip
    assert st.batch(torch.tensor([3]), 2)["flow"].shape == (1, 2, 16, 16)


# ---------------------------------------------------------------- the real UCSD Ped2, when present
def _ped2():
    here = os.path.dirname(os.path.abspath(__file__))
    for p in ("/work/shared/datasets/ped2", os.path.join(here, "..", "..", "..", "shared", "datasets", "ped2")):
        if os.path.isdir(os.path.join(p, "training")):
            return p
    return None


@pytest.mark.skipif(_ped2() is None, reason="UCSD Ped2 not present")
def test_real_ped2_counts_and_labels():
    root = _ped2()
    tr, te = find_clips(root, "training"), find_clips(root, "testing")
    assert len(tr) == 16 and sum(len(c) for c in tr) == 2550
    assert [len(c) for c in te] == [180, 180, 150, 180, 150, 180, 180, 180, 120, 150, 180, 180]
    names, lens = [c.name for c in te], [len(c) for c in te]
    mat = load_labels(os.path.join(root, "ped2.mat"), names, lens)
    npy = load_labels(os.path.join(root, "frame_labels_ped2.npy"), names, lens)
    assert all(np.array_equal(mat[n], npy[n]) for n in names)
    assert sum(int(v.sum()) for v in mat.values()) == 1648
    assert mat["01"].tolist().index(1) == 60  # FFP gt [61; 180], 1-indexed
    assert find_label_source(root) is not None
    frames = read_clip(te[0], 64, 1)
    assert frames.shape == (180, 1, 64, 64)
