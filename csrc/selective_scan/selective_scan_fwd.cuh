// Selective scan forward. One lane group of LANES threads per (sequence, channel) row, kThreads / LANES rows
// per block, so the video regime (very many short rows) fills the GPU; each lane keeps NPT state entries
// (n = j * LANES + lane) in registers and the scan runs sequentially over time, float32 throughout.
#pragma once
#include "common.cuh"
#include "selective_scan/selective_scan.h"

namespace m2s2l {

// Per-row view of the scan inputs, shared by the forward and backward kernels.
template <typename T, typename TW, int NPT, int LANES> struct SSRow {
  const SSParams& p;
  int64_t row, b, d, gB, gC;
  int lane;
  bool valid;
  float A[NPT], Bf[NPT], Cf[NPT];  // A, and B/C when they are fixed per channel
  float Dv, bias;

  __device__ SSRow(const SSParams& p_, int64_t tid) : p(p_) {
    const int64_t rows = (int64_t)p.batch * p.dim;
    row = tid / LANES;
    lane = (int)(tid % LANES);
    valid = row < rows;
    if (!valid) row = rows - 1;  // inactive groups compute a copy of the last row (warp shuffles need them)
    b = row / p.dim;
    d = row % p.dim;
    gB = d / p.B_dpg;
    gC = d / p.C_dpg;
    Dv = p.D ? p.D[d] : 0.f;
    bias = p.delta_bias ? p.delta_bias[d] : 0.f;
#pragma unroll
    for (int j = 0; j < NPT; ++j) {
      const int n = j * LANES + lane;
      const bool ok = n < p.N;
      A[j] = ok ? p.A[d * p.N + n] : 0.f;
      Bf[j] = (ok && !p.B_var) ? ld((const TW*)p.B, gB * p.B_sg + n * p.B_sn) : 0.f;
      Cf[j] = (ok && !p.C_var) ? ld((const TW*)p.C, gC * p.C_sg + n * p.C_sn) : 0.f;
    }
  }
  __device__ __forceinline__ int nidx(int j) const { return j * LANES + lane; }
  __device__ __forceinline__ bool nok(int j) const { return nidx(j) < p.N; }
  __device__ __forceinline__ float u(int t) const { return ld((const T*)p.u, b * p.u_sb + d * p.u_sd + t * p.u_sl); }
  __device__ __forceinline__ float delta_raw(int t) const {
    return ld((const T*)p.delta, b * p.dl_sb + d * p.dl_sd + t * p.dl_sl) + bias;
  }
  __device__ __forceinline__ float dt_of(float raw) const { return p.softplus ? softplusf_(raw) : raw; }
  __device__ __forceinline__ float Bt(int j, int t) const {
    if (!p.B_var) return Bf[j];
    return nok(j) ? ld((const TW*)p.B, b * p.B_sb + gB * p.B_sg + nidx(j) * p.B_sn + t * p.B_sl) : 0.f;
  }
  __device__ __forceinline__ float Ct(int j, int t) const {
    if (!p.C_var) return Cf[j];
    return nok(j) ? ld((const TW*)p.C, b * p.C_sb + gC * p.C_sg + nidx(j) * p.C_sn + t * p.C_sl) : 0.f;
  }
  __device__ __forceinline__ float zt(int t) const { return ld((const T*)p.z, b * p.z_sb + d * p.z_sd + t * p.z_sl); }
  // state-sized float32 tensors (batch, dim, [chunk,] N)
  __device__ __forceinline__ int64_t sidx(int j) const { return row * p.N + nidx(j); }
};

template <typename T, typename TW, int LANES, int NPT>
__global__ void __launch_bounds__(kThreads) ss_fwd_kernel(const SSParams p) {
  SSRow<T, TW, NPT, LANES> r(p, (int64_t)blockIdx.x * kThreads + threadIdx.x);
  float h[NPT];
#pragma unroll
  for (int j = 0; j < NPT; ++j) h[j] = (p.init && r.nok(j)) ? p.init[r.sidx(j)] : 0.f;
  T* out = (T*)p.out + r.row * p.L;
  for (int t = 0; t < p.L; ++t) {
    if (p.saved && t % kChunk == 0 && r.valid) {
#pragma unroll
      for (int j = 0; j < NPT; ++j)
        if (r.nok(j)) p.saved[(r.row * p.nchunks + t / kChunk) * p.N + r.nidx(j)] = h[j];
    }
    const float dt = r.dt_of(r.delta_raw(t));
    const float uu = r.u(t);
    float acc = 0.f;
#pragma unroll
    for (int j = 0; j < NPT; ++j) {
      h[j] = __expf(dt * r.A[j]) * h[j] + dt * r.Bt(j, t) * uu;
      acc += r.Ct(j, t) * h[j];
    }
    acc = group_sum<LANES>(acc);
    float y = acc + r.Dv * uu;
    if (p.z) {
      const float zz = r.zt(t);
      y *= zz * sigmoidf_(zz);
    }
    if (r.lane == 0 && r.valid) out[t] = from_f<T>(y);
  }
  if (r.valid) {
#pragma unroll
    for (int j = 0; j < NPT; ++j)
      if (r.nok(j)) p.last[r.sidx(j)] = h[j];
  }
}

template <typename T, typename TW, int LANES, int NPT> cudaError_t ss_fwd_launch(const SSParams& p, cudaStream_t s) {
  const int64_t threads = (int64_t)p.batch * p.dim * LANES;
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  ss_fwd_kernel<T, TW, LANES, NPT><<<(unsigned)blocks, kThreads, 0, s>>>(p);
  return cudaGetLastError();
}

}  // namespace m2s2l
