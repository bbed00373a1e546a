"""The last step of a pre-norm residual Mamba block over many short sequences, in one kernel (inference):
``naive.py`` (PyTorch reference, composed of the unfused reference ops) and ``mamba_last.py`` (the Triton kernel
and its launcher). The public, validated entry point is ``m2s2l.ops.mamba_block_last``."""

MAX_D_INNER = 128   # the widest d_inner one program holds (its (rows, d_inner, d_state) state lives in registers)
MAX_D_STATE = 16
MAX_DT_RANK = 16
MAX_D_CONV = 4
