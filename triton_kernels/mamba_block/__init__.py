"""The last step of a pre-norm residual Mamba block over many short sequences, in one kernel (inference):
``naive.py`` (PyTorch reference, composed of the unfused reference ops) and ``mamba_last.py`` (the Triton kernel
and its launcher). The public, validated entry point is ``m2s2l.ops.mamba_block_last``."""

MAX_ONE_CHUNK = 128  # d_inner up to this: one pass; wider: chunks of M2S2L_BLOCK_CFG "chunk" (64) channels
MAX_D_INNER = 1024  # the widest d_inner the kernel takes (wider than 128: in chunks, with the steps' x_proj outputs
MAX_CHUNKED_STEPS = 8  # held in registers, so at most this many (pooled) steps)
MAX_D_STATE = 16
MAX_DT_RANK = 16
MAX_D_CONV = 4
