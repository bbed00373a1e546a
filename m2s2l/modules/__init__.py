"""nn.Modules built on m2s2l.ops: the Mamba-1 block and its bidirectional variant."""
from .bimamba import BiMamba  # noqa: F401
from .mamba import Mamba  # noqa: F401

__all__ = ["Mamba", "BiMamba"]
