// Causal conv1d instantiations for bf16.
#include "causal_conv1d/causal_conv1d.cuh"

M2S2L_CONV_INSTANTIATE(__nv_bfloat16)
