// ctypes entry points of the CPU-emulated kernels (csrc/tools/cpu_emulate/run.sh).
#include "selective_scan/selective_scan_bwd.cuh"
#include "causal_conv1d/causal_conv1d.cuh"
using namespace m2s2l;
template <typename T, typename TW> static int ss(const SSParams* p, int fwd, int lanes, int npt) {
#define GO(LN, NP) if (lanes == LN && npt == NP) return fwd ? (int)ss_fwd_launch<T, TW, LN, NP>(*p, 0) : (int)ss_bwd_launch<T, TW, LN, NP>(*p, 0);
  GO(4, 4) GO(16, 1) GO(16, 4) GO(32, 8)
#undef GO
  return -1;
}
template <typename T> static int cv(const ConvParams* p, int fwd, int wmax) {
  if (wmax == 4) return fwd ? (int)conv_fwd_launch<T, 4>(*p, 0) : (int)conv_bwd_launch<T, 4>(*p, 0);
  if (wmax == 8) return fwd ? (int)conv_fwd_launch<T, 8>(*p, 0) : (int)conv_bwd_launch<T, 8>(*p, 0);
  return fwd ? (int)conv_fwd_launch<T, 16>(*p, 0) : (int)conv_bwd_launch<T, 16>(*p, 0);
}
extern "C" int emu_ss(const SSParams* p, int fwd, int lanes, int npt, int bf16) {
  return bf16 ? ss<__nv_bfloat16, __nv_bfloat16>(p, fwd, lanes, npt) : ss<float, float>(p, fwd, lanes, npt);
}
extern "C" int emu_conv(const ConvParams* p, int fwd, int wmax, int bf16) {
  return bf16 ? cv<__nv_bfloat16>(p, fwd, wmax) : cv<float>(p, fwd, wmax);
}
extern "C" int emu_sizeof_ss() { return sizeof(SSParams); }
extern "C" int emu_sizeof_conv() { return sizeof(ConvParams); }
