// Causal conv1d instantiations for fp32.
#include "causal_conv1d/causal_conv1d.cuh"

M2S2L_CONV_INSTANTIATE(float)
