// Small device helpers shared by the m2s2l CUDA kernels: dtype conversion, activations, warp reductions.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cstdint>

namespace m2s2l {

constexpr unsigned kFullMask = 0xffffffffu;

template <typename T> __device__ __forceinline__ float to_f(T v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T> __device__ __forceinline__ float ld(const T* p, int64_t i) { return to_f<T>(p[i]); }

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + __expf(-x)); }

// torch.nn.functional.softplus with beta=1, threshold=20.
__device__ __forceinline__ float softplusf_(float x) { return x > 20.f ? x : log1pf(__expf(x)); }

// Sum over the LANES consecutive lanes of a lane group (LANES a power of two <= 32); every lane gets the sum.
// All 32 lanes of the warp must call it.
template <int LANES> __device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int off = LANES / 2; off > 0; off /= 2) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// Sum over lanes with the same (lane % LANES) across the warp, i.e. over the 32/LANES lane groups.
template <int LANES> __device__ __forceinline__ float across_groups_sum(float v) {
#pragma unroll
  for (int off = 16; off >= LANES; off /= 2) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

}  // namespace m2s2l
