// Selective scan fwd instantiations for fp16 inputs (B/C in the same dtype or float32).
#include "selective_scan/selective_scan_fwd.cuh"

M2S2L_SS_INSTANTIATE(ss_fwd_launch, __half, __half)
M2S2L_SS_INSTANTIATE(ss_fwd_launch, __half, float)
