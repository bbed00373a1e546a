// Selective scan backward. Same row mapping as the forward. Per row, chunks of kChunk steps are processed
// last to first: the chunk is recomputed from the state the forward saved at its start, the state at every
// kSub-step sub-chunk start goes to shared memory, and each sub-chunk (last to first) is recomputed once more
// with its kSub states in registers before the reverse-time gradient recurrence runs over it.
// Per-channel sums (dA, dD, ddelta_bias, fixed dB/dC) are accumulated in registers and added atomically at
// the end; input-dependent dB/dC are summed over the rows of the block (or else of the warp) that share
// (batch, group) first.
#pragma once
#include "selective_scan/selective_scan_fwd.cuh"

namespace m2s2l {

// Add v to dst[i] from every row; when the warp's rows all share one (batch, group) key, sum over them first.
template <int LANES>
__device__ __forceinline__ void add_bc_grad(float* dst, int64_t i, float v, bool warp_uniform, bool ok) {
  if (LANES < 32 && warp_uniform) {
    v = across_groups_sum<LANES>(ok ? v : 0.f);  // lane group 0 is valid whenever any group of the warp is
    if ((threadIdx.x & 31) < LANES && ok) atomicAdd(dst + i, v);
  } else if (ok) {
    atomicAdd(dst + i, v);
  }
}

constexpr int kWarps = kThreads / 32;

// Input-dependent dB or dC of step t: v[j] is this lane's value for n = j * LANES + lane. When the whole
// block shares one (batch, group) key (block_uniform, the same in every thread) the values are summed over
// the block's rows in shared memory first, so one atomic per (n, t) leaves the block; otherwise per warp.
template <int LANES, int NPT>
__device__ __forceinline__ void add_bc_step(float* dst, int64_t key, int N, int L, int t, const float (&v)[NPT],
                                            int lane, bool valid, bool block_uniform, bool warp_uniform,
                                            float (&red)[kWarps][NPT][LANES]) {
  if (block_uniform) {
    const int warp = threadIdx.x >> 5, l32 = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < NPT; ++j) {
      const float sj = across_groups_sum<LANES>(valid ? v[j] : 0.f);
      if (l32 < LANES) red[warp][j][l32] = sj;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < NPT * LANES; e += kThreads) {
      const int j = e / LANES, l = e % LANES, n = j * LANES + l;
      if (n < N) {
        float sum = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) sum += red[w][j][l];
        atomicAdd(dst + (key * N + n) * L + t, sum);
      }
    }
    __syncthreads();
  } else {
#pragma unroll
    for (int j = 0; j < NPT; ++j)
      add_bc_grad<LANES>(dst, (key * N + j * LANES + lane) * L + t, v[j], warp_uniform,
                         valid && j * LANES + lane < N);
  }
}

template <typename T, typename TW, int LANES, int NPT>
__global__ void __launch_bounds__(kThreads) ss_bwd_kernel(const SSParams p) {
  SSRow<T, TW, NPT, LANES> r(p, (int64_t)blockIdx.x * kThreads + threadIdx.x);
  __shared__ float sub_state[kSubsPerChunk][NPT][kThreads];
  const int tx = threadIdx.x;
  // Do all rows of this warp share one (batch, group)? Then input-dependent dB/dC are reduced in the warp.
  const int64_t keyB = r.b * p.B_groups + r.gB, keyC = r.b * p.C_groups + r.gC;
  const bool uniB = __all_sync(kFullMask, keyB == __shfl_sync(kFullMask, keyB, 0));
  const bool uniC = __all_sync(kFullMask, keyC == __shfl_sync(kFullMask, keyC, 0));
  // ... and all rows of this block? (thread 0 holds the block's first row, always a valid one)
  __shared__ long long key0[2];
  __shared__ float red[kWarps][NPT][LANES];
  if (tx == 0) { key0[0] = keyB; key0[1] = keyC; }
  __syncthreads();
  const bool blkB = __syncthreads_and(keyB == key0[0]) != 0;
  const bool blkC = __syncthreads_and(keyC == key0[1]) != 0;
  const bool ok0 = r.valid;

  float g[NPT], h[NPT], dA[NPT], dBf[NPT], dCf[NPT];
#pragma unroll
  for (int j = 0; j < NPT; ++j) {
    g[j] = (p.dlast && r.nok(j)) ? p.dlast[r.sidx(j)] : 0.f;
    dA[j] = dBf[j] = dCf[j] = 0.f;
  }
  float dD = 0.f, dbias = 0.f;
  T* du = (T*)p.du + r.row * p.L;
  T* ddelta = (T*)p.ddelta + r.row * p.L;
  T* dz = p.dz ? (T*)p.dz + r.row * p.L : nullptr;

  for (int c = p.nchunks - 1; c >= 0; --c) {
    const int t0 = c * kChunk;
#pragma unroll
    for (int j = 0; j < NPT; ++j) h[j] = r.nok(j) ? p.saved[(r.row * p.nchunks + c) * p.N + r.nidx(j)] : 0.f;
    // 1) recompute the chunk forward, keeping the state at each sub-chunk start
    for (int s = 0; s < kSubsPerChunk; ++s) {
#pragma unroll
      for (int j = 0; j < NPT; ++j) sub_state[s][j][tx] = h[j];
      if (s == kSubsPerChunk - 1) break;
      for (int k = 0; k < kSub; ++k) {
        const int t = t0 + s * kSub + k;
        if (t >= p.L) break;
        const float dt = r.dt_of(r.delta_raw(t)), uu = r.u(t);
#pragma unroll
        for (int j = 0; j < NPT; ++j) h[j] = __expf(dt * r.A[j]) * h[j] + dt * r.Bt(j, t) * uu;
      }
    }
    // 2) sub-chunks last to first
    for (int s = kSubsPerChunk - 1; s >= 0; --s) {
      const int ts = t0 + s * kSub;
      if (ts >= p.L) continue;
      float hist[kSub][NPT], dts[kSub], raws[kSub], us[kSub];  // per-thread local memory (L1)
#pragma unroll
      for (int j = 0; j < NPT; ++j) h[j] = sub_state[s][j][tx];
#pragma unroll 1
      for (int k = 0; k < kSub; ++k) {
        const int t = ts + k;
        raws[k] = 0.f; dts[k] = 0.f; us[k] = 0.f;
        if (t < p.L) {
          raws[k] = r.delta_raw(t);
          dts[k] = r.dt_of(raws[k]);
          us[k] = r.u(t);
        }
#pragma unroll
        for (int j = 0; j < NPT; ++j) {
          hist[k][j] = h[j];
          if (t < p.L) h[j] = __expf(dts[k] * r.A[j]) * h[j] + dts[k] * r.Bt(j, t) * us[k];
        }
      }
#pragma unroll 1
      for (int k = kSub - 1; k >= 0; --k) {
        const int t = ts + k;
        if (t >= p.L) continue;
        const float dout = ld((const T*)p.dout, r.b * p.do_sb + r.d * p.do_sd + t * p.do_sl);
        const float dt = dts[k], uu = us[k];
        float dy = dout, zz = 0.f, sz = 0.f;
        if (p.z) {
          zz = r.zt(t);
          sz = sigmoidf_(zz);
          dy = dout * zz * sz;
        }
        float ddt = 0.f, dui = 0.f, ypart = 0.f, dBt[NPT], dCt[NPT];
#pragma unroll
        for (int j = 0; j < NPT; ++j) {
          const float a = __expf(dt * r.A[j]);
          const float Bv = r.Bt(j, t), Cv = r.Ct(j, t);
          const float hp = hist[k][j];
          const float hc = a * hp + dt * Bv * uu;
          ypart += Cv * hc;
          const float dCv = dy * hc;
          g[j] += dy * Cv;
          ddt += g[j] * (r.A[j] * a * hp + Bv * uu);
          dA[j] += g[j] * dt * a * hp;
          const float dBv = g[j] * dt * uu;
          dui += g[j] * dt * Bv;
          g[j] *= a;
          dBt[j] = dBv;
          dCt[j] = dCv;
          if (!p.B_var) dBf[j] += dBv;
          if (!p.C_var) dCf[j] += dCv;
        }
        if (p.B_var) add_bc_step<LANES, NPT>(p.dB, keyB, p.N, p.L, t, dBt, r.lane, ok0, blkB, uniB, red);
        if (p.C_var) add_bc_step<LANES, NPT>(p.dC, keyC, p.N, p.L, t, dCt, r.lane, ok0, blkC, uniC, red);
        ddt = group_sum<LANES>(ddt);
        dui = group_sum<LANES>(dui);
        if (p.z) ypart = group_sum<LANES>(ypart);
        dui += dy * r.Dv;
        dD += dy * uu;
        if (p.softplus) ddt *= sigmoidf_(raws[k]);
        dbias += ddt;
        if (r.lane == 0 && r.valid) {
          du[t] = from_f<T>(dui);
          ddelta[t] = from_f<T>(ddt);
          if (p.z) {
            const float y = ypart + r.Dv * uu;
            dz[t] = from_f<T>(dout * y * sz * (1.f + zz * (1.f - sz)));
          }
        }
      }
    }
  }
  if (!r.valid) return;
#pragma unroll
  for (int j = 0; j < NPT; ++j) {
    if (!r.nok(j)) continue;
    if (p.dinit) p.dinit[r.sidx(j)] = g[j];
    atomicAdd(p.dA + r.d * p.N + r.nidx(j), dA[j]);
    if (!p.B_var) atomicAdd(p.dB + r.d * p.N + r.nidx(j), dBf[j]);
    if (!p.C_var) atomicAdd(p.dC + r.d * p.N + r.nidx(j), dCf[j]);
  }
  if (r.lane == 0) {
    if (p.dD) atomicAdd(p.dD + r.d, dD);
    if (p.ddelta_bias) atomicAdd(p.ddelta_bias + r.d, dbias);
  }
}

template <typename T, typename TW, int LANES, int NPT> cudaError_t ss_bwd_launch(const SSParams& p, cudaStream_t s) {
  const int64_t threads = (int64_t)p.batch * p.dim * LANES;
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  ss_bwd_kernel<T, TW, LANES, NPT><<<(unsigned)blocks, kThreads, 0, s>>>(p);
  return cudaGetLastError();
}

}  // namespace m2s2l
