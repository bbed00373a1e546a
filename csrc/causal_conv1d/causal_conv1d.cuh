// Causal depthwise conv1d, forward and backward. Each thread owns kConvTile consecutive outputs of one
// (sequence, channel) row, so a block holds many short rows (video regime) or many tiles of long rows.
// The width is bucketed at compile time (WMAX in 4/8/16; weights zero-padded on the left to WMAX), so all
// windows live in registers. Accumulation is float32; dweight/dbias are summed in the warp when all its
// threads hold the same channel, then added atomically.
#pragma once
#include "common.cuh"
#include "causal_conv1d/causal_conv1d.h"

namespace m2s2l {

template <typename T, int WMAX> struct ConvItem {
  const ConvParams& p;
  int64_t row, b, d;
  int p0;        // first output position of this thread's tile
  bool valid;
  float w[WMAX];  // weight of channel d, left-padded with zeros to WMAX taps
  float bias;

  __device__ ConvItem(const ConvParams& p_, int64_t i) : p(p_) {
    const int ntiles = (p.L + kConvTile - 1) / kConvTile;
    const int64_t items = (int64_t)p.batch * p.dim * ntiles;
    valid = i < items;
    if (!valid) i = items - 1;  // inactive threads mirror the last item (warp shuffles need them)
    int tile;
    if (p.batch_major) {  // ntiles == 1
      b = i % p.batch; d = i / p.batch; tile = 0;
    } else {
      tile = (int)(i % ntiles);
      const int64_t rw = i / ntiles;
      b = rw / p.dim; d = rw % p.dim;
    }
    row = b * p.dim + d;
    p0 = tile * kConvTile;
#pragma unroll
    for (int k = 0; k < WMAX; ++k) {
      const int kk = k - (WMAX - p.W);
      w[k] = kk >= 0 ? p.weight[d * p.W + kk] : 0.f;
    }
    bias = p.bias ? p.bias[d] : 0.f;
  }
  // input at time position pos of [initial_states, x] (pos < 0 reads initial_states, or zero without them)
  __device__ __forceinline__ float x_at(int pos) const {
    if (pos >= 0) return pos < p.L ? ld((const T*)p.x, b * p.x_sb + d * p.x_sd + pos * p.x_sl) : 0.f;
    if (p.init && pos >= -(p.W - 1)) return ld((const T*)p.init, row * (p.W - 1) + (p.W - 1 + pos));
    return 0.f;
  }
};

template <typename T, int WMAX>
__global__ void __launch_bounds__(kConvThreads) conv_fwd_kernel(const ConvParams p) {
  ConvItem<T, WMAX> it(p, (int64_t)blockIdx.x * kConvThreads + threadIdx.x);
  if (!it.valid) return;
  float xw[kConvTile + WMAX - 1];
#pragma unroll
  for (int i = 0; i < kConvTile + WMAX - 1; ++i) xw[i] = it.x_at(it.p0 - WMAX + 1 + i);
  T* out = (T*)p.out + it.row * p.L;
#pragma unroll
  for (int o = 0; o < kConvTile; ++o) {
    float acc = it.bias;
#pragma unroll
    for (int k = 0; k < WMAX; ++k) acc += it.w[k] * xw[o + k];
    if (p.silu) acc *= sigmoidf_(acc);
    if (it.p0 + o < p.L) out[it.p0 + o] = from_f<T>(acc);
  }
  if (p.final_states && it.p0 == 0) {
    T* fs = (T*)p.final_states + it.row * (p.W - 1);
    for (int j = 0; j < p.W - 1; ++j) fs[j] = from_f<T>(it.x_at(p.L - (p.W - 1) + j));
  }
}

template <typename T, int WMAX>
__global__ void __launch_bounds__(kConvThreads) conv_bwd_kernel(const ConvParams p) {
  ConvItem<T, WMAX> it(p, (int64_t)blockIdx.x * kConvThreads + threadIdx.x);
  constexpr int NX = kConvTile + 2 * WMAX - 2, ND = kConvTile + WMAX - 1;
  float xw[NX], dacc[ND];
#pragma unroll
  for (int i = 0; i < NX; ++i) xw[i] = it.x_at(it.p0 - WMAX + 1 + i);
  // gradient w.r.t. the pre-activation at t = p0 + i (zero past the end)
#pragma unroll
  for (int i = 0; i < ND; ++i) {
    const int t = it.p0 + i;
    float gr = 0.f;
    if (t < p.L) {
      gr = ld((const T*)p.dout, it.b * p.do_sb + it.d * p.do_sd + t * p.do_sl);
      if (p.silu) {
        float a = it.bias;
#pragma unroll
        for (int k = 0; k < WMAX; ++k) a += it.w[k] * xw[i + k];
        const float s = sigmoidf_(a);
        gr *= s * (1.f + a * (1.f - s));
      }
    }
    dacc[i] = gr;
  }
  const T* dfin = p.dfinal ? (const T*)p.dfinal + it.row * (p.W - 1) : nullptr;
  if (it.valid) {
    T* dx = (T*)p.dx + it.row * p.L;
#pragma unroll
    for (int o = 0; o < kConvTile; ++o) {
      const int pos = it.p0 + o;
      if (pos >= p.L) continue;
      float v = 0.f;
#pragma unroll
      for (int k = 0; k < WMAX; ++k) v += it.w[k] * dacc[o + WMAX - 1 - k];
      const int j = pos - p.L + p.W - 1;
      if (dfin && j >= 0) v += to_f<T>(dfin[j]);
      dx[pos] = from_f<T>(v);
    }
    if (p.dinit && it.p0 == 0) {
      T* di = (T*)p.dinit + it.row * (p.W - 1);
#pragma unroll
      for (int q = 0; q < WMAX - 1; ++q) {
        const int pos = q - (WMAX - 1), ii = p.W - 1 + pos;
        if (ii < 0) continue;
        float v = 0.f;
#pragma unroll
        for (int k = 0; k <= q; ++k) v += it.w[k] * dacc[q - k];
        const int j = pos - p.L + p.W - 1;
        if (dfin && j >= 0) v += to_f<T>(dfin[j]);
        di[ii] = from_f<T>(v);
      }
    }
  }
  // weight / bias partial sums over this tile, then reduced over the warp when it holds one channel
  const bool uniform = __all_sync(kFullMask, it.d == __shfl_sync(kFullMask, it.d, 0));
  const bool lead = uniform ? (threadIdx.x & 31) == 0 : it.valid;
  float db = 0.f;
#pragma unroll
  for (int o = 0; o < kConvTile; ++o) db += dacc[o];
  db = it.valid ? db : 0.f;
  if (uniform) db = across_groups_sum<1>(db);
  if (p.dbias && lead) atomicAdd(p.dbias + it.d, db);
#pragma unroll
  for (int k = 0; k < WMAX; ++k) {
    float s = 0.f;
#pragma unroll
    for (int o = 0; o < kConvTile; ++o) s += dacc[o] * xw[o + k];
    s = it.valid ? s : 0.f;
    if (uniform) s = across_groups_sum<1>(s);
    const int kk = k - (WMAX - p.W);
    if (lead && kk >= 0) atomicAdd(p.dweight + it.d * p.W + kk, s);
  }
}

template <typename T, int WMAX> cudaError_t conv_fwd_launch(const ConvParams& p, cudaStream_t s) {
  const int64_t items = (int64_t)p.batch * p.dim * ((p.L + kConvTile - 1) / kConvTile);
  conv_fwd_kernel<T, WMAX><<<(unsigned)((items + kConvThreads - 1) / kConvThreads), kConvThreads, 0, s>>>(p);
  return cudaGetLastError();
}

template <typename T, int WMAX> cudaError_t conv_bwd_launch(const ConvParams& p, cudaStream_t s) {
  const int64_t items = (int64_t)p.batch * p.dim * ((p.L + kConvTile - 1) / kConvTile);
  conv_bwd_kernel<T, WMAX><<<(unsigned)((items + kConvThreads - 1) / kConvThreads), kConvThreads, 0, s>>>(p);
  return cudaGetLastError();
}

}  // namespace m2s2l
