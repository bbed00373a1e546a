// Causal depthwise conv1d kernel parameters and launchers (host code: causal_conv1d.cpp; instantiations:
// causal_conv1d_{fp32,fp16,bf16}.cu).
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace m2s2l {

constexpr int kConvTile = 8;       // outputs per thread along time
constexpr int kConvThreads = 128;

struct ConvParams {
  int batch, dim, L, W;  // x (batch, dim, L), weight (dim, W)
  bool silu;
  bool batch_major;      // work items ordered batch-fastest (one tile per row): weight grads reduce in a warp
  const void* x;         // T, any strides
  int64_t x_sb, x_sd, x_sl;
  const float *weight, *bias;  // float32 contiguous (dim, W), (dim,) or null
  const void* init;      // T contiguous (batch, dim, W-1) or null
  void* out;             // T contiguous (batch, dim, L)
  void* final_states;    // T contiguous (batch, dim, W-1) or null
  // backward
  const void* dout;      // T, any strides
  int64_t do_sb, do_sd, do_sl;
  const void* dfinal;    // T contiguous (batch, dim, W-1) or null
  void* dx;              // T contiguous (batch, dim, L)
  void* dinit;           // T contiguous (batch, dim, W-1) or null
  float *dweight, *dbias;  // float32 (dim, W), (dim,), zero-initialised; dbias may be null
};

// WMAX: the compile-time width bucket (4, 8 or 16); the runtime width W <= WMAX.
template <typename T, int WMAX> cudaError_t conv_fwd_launch(const ConvParams& p, cudaStream_t s);
template <typename T, int WMAX> cudaError_t conv_bwd_launch(const ConvParams& p, cudaStream_t s);

}  // namespace m2s2l

#define M2S2L_CONV_INSTANTIATE(T)                                                      \
  template cudaError_t m2s2l::conv_fwd_launch<T, 4>(const m2s2l::ConvParams&, cudaStream_t);  \
  template cudaError_t m2s2l::conv_fwd_launch<T, 8>(const m2s2l::ConvParams&, cudaStream_t);  \
  template cudaError_t m2s2l::conv_fwd_launch<T, 16>(const m2s2l::ConvParams&, cudaStream_t); \
  template cudaError_t m2s2l::conv_bwd_launch<T, 4>(const m2s2l::ConvParams&, cudaStream_t);  \
  template cudaError_t m2s2l::conv_bwd_launch<T, 8>(const m2s2l::ConvParams&, cudaStream_t);  \
  template cudaError_t m2s2l::conv_bwd_launch<T, 16>(const m2s2l::ConvParams&, cudaStream_t);
