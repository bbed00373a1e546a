"""The last step of a pre-norm residual Mamba block over many short sequences, in one kernel (inference):
``naive.py`` (PyTorch reference, composed of the unfused reference ops) and ``mamba_last.py`` (the Triton kernel
and its launcher). The public, validated entry point is ``m2s2l.ops.mamba_block_last``."""

# d_inner up to MAX_ONE_CHUNK: one pass; wider, up to MAX_D_INNER: in chunks of M2S2L_BLOCK_CFG "chunk" (64)
# channels, with every step's x_proj outputs held in registers -- so at most MAX_CHUNKED_STEPS (pooled) steps
MAX_ONE_CHUNK = 128
MAX_D_INNER = 1024
MAX_CHUNKED_STEPS = 8
MAX_D_STATE = 16
MAX_DT_RANK = 16
MAX_D_CONV = 4
