// Selective scan bwd instantiations for fp32 inputs (B/C in the same dtype or float32).
#include "selective_scan/selective_scan_bwd.cuh"

M2S2L_SS_INSTANTIATE(ss_bwd_launch, float, float)
