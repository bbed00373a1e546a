"""Data: clip discovery and decoding (frames.py), ground-truth formats (labels.py), the uint8 frame cache with
index-arithmetic clip sampling (store.py) and the synthetic demo dataset (synthetic.py)."""
from .frames import Clip, find_clips, read_clip  # noqa: F401
from .labels import find_label_source, load_labels  # noqa: F401
from .store import FrameStore, choose_val_clips  # noqa: F401
