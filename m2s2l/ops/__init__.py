"""Public ops. Each validates its arguments once and dispatches to a backend
("auto" | "triton" | "cuda" | "torch"); see ``m2s2l.ops._backend``."""
from ._backend import BACKENDS, resolve_backend, triton_available  # noqa: F401
from .selective_scan import selective_scan_fn  # noqa: F401
from .steps import causal_conv1d_update, selective_state_update  # noqa: F401
from .causal_conv1d import causal_conv1d_fn  # noqa: F401
from .layer_norm import layer_norm  # noqa: F401
from .mamba_block import mamba_block_last, mamba_block_prep  # noqa: F401
from .upsample import upsample_cat  # noqa: F401
from .frame_errors import frame_errors  # noqa: F401

__all__ = ["selective_scan_fn", "selective_state_update", "causal_conv1d_fn", "causal_conv1d_update", "layer_norm",
           "mamba_block_last", "mamba_block_prep", "upsample_cat", "frame_errors", "BACKENDS", "resolve_backend", "triton_available"]
