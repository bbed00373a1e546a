// CPU shim for csrc/tools/cpu_emulate/run.sh (see there).
// CPU shim: runs the csrc kernels with one std::thread per CUDA thread (one block at a time), for ASan.
#pragma once
#include <cuda_runtime_api.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>
#include <functional>
#undef __global__
#undef __device__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(x)
struct emu_dim3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local emu_dim3 threadIdx, blockIdx;
inline std::barrier<>* emu_block_bar;
inline std::barrier<>* emu_warp_bar[32];
inline uint64_t emu_warp_buf[32][32];
inline int emu_block_buf[1024];
inline std::mutex emu_atomic_mu;
inline unsigned EMU_NTHREADS_CUR_v = 0;
#define EMU_NTHREADS_CUR EMU_NTHREADS_CUR_v
inline void __syncthreads() { emu_block_bar->arrive_and_wait(); }
inline int __syncthreads_and(int pred) {
  emu_block_bar->arrive_and_wait();
  emu_block_buf[threadIdx.x] = pred;
  emu_block_bar->arrive_and_wait();
  int r = 1;
  for (int i = 0; i < (int)EMU_NTHREADS_CUR; ++i) r &= emu_block_buf[i] != 0;
  emu_block_bar->arrive_and_wait();
  return r;
}
template <typename V> inline V emu_exchange(V v, int src) {
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  uint64_t bits = 0; std::memcpy(&bits, &v, sizeof(V));
  emu_warp_buf[w][l] = bits;
  emu_warp_bar[w]->arrive_and_wait();
  uint64_t got = emu_warp_buf[w][src];
  emu_warp_bar[w]->arrive_and_wait();
  V r; std::memcpy(&r, &got, sizeof(V)); return r;
}
template <typename V> inline V __shfl_sync(unsigned mask, V v, int src) {
  if (mask != 0xffffffffu) std::abort();
  return emu_exchange(v, src);
}
template <typename V> inline V __shfl_xor_sync(unsigned mask, V v, int m) {
  if (mask != 0xffffffffu) std::abort();
  return emu_exchange(v, (threadIdx.x % 32) ^ m);
}
inline int __all_sync(unsigned mask, int pred) {
  if (mask != 0xffffffffu) std::abort();
  int r = 1;
  for (int i = 0; i < 32; ++i) r &= emu_exchange(pred != 0, i) ? 1 : 0;
  return r;
}
inline float atomicAdd(float* p, float v) { std::lock_guard<std::mutex> g(emu_atomic_mu); float o = *p; *p = o + v; return o; }
inline float __expf(float x) { return expf(x); }
inline void emu_launch(unsigned blocks, unsigned threads, const std::function<void()>& body) {
  if (threads % 32) std::abort();
  EMU_NTHREADS_CUR_v = threads;
  for (unsigned b = 0; b < blocks; ++b) {
    std::barrier<> bb(threads); emu_block_bar = &bb;
    std::vector<std::barrier<>*> wb;
    for (unsigned w = 0; w < threads / 32; ++w) { wb.push_back(new std::barrier<>(32)); emu_warp_bar[w] = wb.back(); }
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < threads; ++t)
      ts.emplace_back([&, t] { threadIdx.x = t; blockIdx.x = b; body(); });
    for (auto& th : ts) th.join();
    for (auto* p : wb) delete p;
  }
}
#define cudaGetLastError() cudaSuccess
