// Python bindings of the m2s2l._C extension. The Python side is m2s2l/ops/_cuda.py.
#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "m2s2l CUDA kernels: selective scan and causal depthwise conv1d, forward and backward";
  m.def("selective_scan_fwd", &m2s2l::selective_scan_fwd, "selective scan forward");
  m.def("selective_scan_bwd", &m2s2l::selective_scan_bwd, "selective scan backward");
  m.def("causal_conv1d_fwd", &m2s2l::causal_conv1d_fwd, "causal depthwise conv1d forward");
  m.def("causal_conv1d_bwd", &m2s2l::causal_conv1d_bwd, "causal depthwise conv1d backward");
}
