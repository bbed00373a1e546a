"""nn.Modules built on m2s2l.ops: the Mamba-1 block, its bidirectional variant and a drop-in nn.LayerNorm."""
from .bimamba import BiMamba  # noqa: F401
from .layer_norm import LayerNorm  # noqa: F401
from .mamba import Mamba  # noqa: F401

__all__ = ["Mamba", "BiMamba", "LayerNorm"]
