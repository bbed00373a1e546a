// Causal conv1d instantiations for fp16.
#include "causal_conv1d/causal_conv1d.cuh"

M2S2L_CONV_INSTANTIATE(__half)
