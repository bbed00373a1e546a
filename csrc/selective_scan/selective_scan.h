// Selective scan (S6) kernel parameters and launchers, shared by the host code (selective_scan.cpp) and the
// per-dtype instantiation files (selective_scan_{fwd,bwd}_{fp32,fp16,bf16}.cu).
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace m2s2l {

// The forward saves the state at the start of every kChunk steps; the backward recomputes each chunk from
// it, keeping sub-chunk states (every kSub steps) in shared memory and the last kSub states in registers.
constexpr int kSub = 8;
constexpr int kSubsPerChunk = 8;
constexpr int kChunk = kSub * kSubsPerChunk;
constexpr int kThreads = 128;  // threads per block; a block holds kThreads / LANES (sequence, channel) rows

struct SSParams {
  int batch, dim, L, N;      // u is (batch, dim, L), the state (batch, dim, N)
  // channel d reads group d / X_dpg of X = B or C: fixed (dim, N) has X_groups = dim, X_dpg = 1;
  // (batch, N, L) has X_groups = 1, X_dpg = dim; (batch, G, N, L) has X_groups = G, X_dpg = dim / G
  int B_groups, B_dpg, C_groups, C_dpg;
  int nchunks;               // ceil(L / kChunk)
  bool softplus, B_var, C_var;
  // inputs (u, delta, z, dout in the input dtype T; B, C in TW; the rest float32)
  const void *u, *delta, *z, *B, *C, *dout;
  const float *A, *D, *delta_bias, *init, *dlast;
  int64_t u_sb, u_sd, u_sl, dl_sb, dl_sd, dl_sl, z_sb, z_sd, z_sl, do_sb, do_sd, do_sl;
  int64_t B_sb, B_sg, B_sn, B_sl, C_sb, C_sg, C_sn, C_sl;  // fixed B/C: sb = sl = 0, sg = stride of dim
  // outputs (contiguous): out (batch, dim, L) T; last (batch, dim, N) f32; saved (batch, dim, nchunks, N) f32
  void* out;
  float *last, *saved;
  // backward outputs (contiguous): du, ddelta, dz in T; the rest float32, accumulated with atomics
  void *du, *ddelta, *dz;
  float *dA, *dB, *dC, *dD, *ddelta_bias, *dinit;
};

// Lane-group configurations: LANES threads share one row, each holding NPT state entries (N <= LANES * NPT).
template <typename T, typename TW, int LANES, int NPT> cudaError_t ss_fwd_launch(const SSParams& p, cudaStream_t s);
template <typename T, typename TW, int LANES, int NPT> cudaError_t ss_bwd_launch(const SSParams& p, cudaStream_t s);

}  // namespace m2s2l

// Explicit instantiation of a launcher for every lane-group configuration (see selective_scan.cpp).
#define M2S2L_SS_INSTANTIATE(LAUNCH, T, TW)                                  \
  template cudaError_t m2s2l::LAUNCH<T, TW, 4, 4>(const m2s2l::SSParams&, cudaStream_t);   \
  template cudaError_t m2s2l::LAUNCH<T, TW, 16, 1>(const m2s2l::SSParams&, cudaStream_t);  \
  template cudaError_t m2s2l::LAUNCH<T, TW, 16, 4>(const m2s2l::SSParams&, cudaStream_t);  \
  template cudaError_t m2s2l::LAUNCH<T, TW, 32, 8>(const m2s2l::SSParams&, cudaStream_t);
