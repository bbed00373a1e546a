// Selective scan host code: argument checks, output allocation, dtype and lane-group dispatch.
#include "ops.h"
#include "selective_scan/selective_scan.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace m2s2l {
namespace {

void check_cuda(const at::Tensor& t, const char* name, const at::Tensor& ref) {
  M2S2L_CHECK(t.is_cuda(), "selective_scan: ", name, " must be a CUDA tensor");
  M2S2L_CHECK(t.device() == ref.device(), "selective_scan: ", name, " is on ", t.device(), " but u is on ",
              ref.device());
}

// Small float32 side inputs (A, D, delta_bias, states) are made contiguous float32 here.
at::Tensor f32_input(const at::Tensor& t, const char* name, at::IntArrayRef shape, const at::Tensor& u) {
  check_cuda(t, name, u);
  M2S2L_CHECK(t.scalar_type() == at::kFloat, "selective_scan: ", name, " must be float32, got ", t.scalar_type());
  M2S2L_CHECK(t.sizes() == shape, "selective_scan: ", name, " must have shape ", shape, ", got ", t.sizes());
  return t.contiguous();
}

void set_bc(const at::Tensor& X, const char* name, const at::Tensor& u, int64_t N, SSParams& p, bool is_B) {
  check_cuda(X, name, u);
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2);
  int64_t G, sb, sg, sn, sl;
  bool var;
  if (X.dim() == 2) {
    M2S2L_CHECK(X.size(0) == dim && X.size(1) == N, "selective_scan: fixed ", name, " must be (dim, dstate) = (",
                dim, ", ", N, "), got ", X.sizes());
    var = false; G = dim; sb = 0; sg = X.stride(0); sn = X.stride(1); sl = 0;
  } else if (X.dim() == 3) {
    M2S2L_CHECK(X.size(0) == batch && X.size(1) == N && X.size(2) == L, "selective_scan: ", name,
                " must be (batch, dstate, seqlen) = (", batch, ", ", N, ", ", L, "), got ", X.sizes());
    var = true; G = 1; sb = X.stride(0); sg = 0; sn = X.stride(1); sl = X.stride(2);
  } else {
    M2S2L_CHECK(X.dim() == 4, "selective_scan: ", name, " must be (dim, dstate), (batch, dstate, seqlen) or ",
                "(batch, groups, dstate, seqlen), got ", X.dim(), " dims");
    G = X.size(1);
    M2S2L_CHECK(X.size(0) == batch && G >= 1 && dim % G == 0 && X.size(2) == N && X.size(3) == L,
                "selective_scan: ", name, " must be (batch, groups, dstate, seqlen) = (", batch,
                ", groups dividing ", dim, ", ", N, ", ", L, "), got ", X.sizes());
    var = true; sb = X.stride(0); sg = X.stride(1); sn = X.stride(2); sl = X.stride(3);
  }
  if (is_B) {
    p.B = X.data_ptr(); p.B_var = var; p.B_sb = sb; p.B_sg = sg; p.B_sn = sn; p.B_sl = sl;
  } else {
    p.C = X.data_ptr(); p.C_var = var; p.C_sb = sb; p.C_sg = sg; p.C_sn = sn; p.C_sl = sl;
  }
  const int dpg = G > 0 ? (int)(dim / G) : 1;  // dim = 0 (an empty launch) must not divide by zero on the host
  if (is_B) { p.B_groups = (int)G; p.B_dpg = dpg; }
  else { p.C_groups = (int)G; p.C_dpg = dpg; }
}

// Shared setup of forward and backward parameters.
SSParams make_params(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                     const at::Tensor& C, const OptT& D, const OptT& z, const OptT& delta_bias,
                     bool delta_softplus, std::vector<at::Tensor>& keep) {
  M2S2L_CHECK(u.is_cuda(), "selective_scan: u must be a CUDA tensor");
  M2S2L_CHECK(u.dim() == 3, "selective_scan: u must be (batch, dim, seqlen), got ", u.sizes());
  const auto dt = u.scalar_type();
  M2S2L_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "selective_scan: u must be float32, float16 or bfloat16, got ", dt);
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2);
  // int32 fields in SSParams; a 1-D grid of batch * dim * 32 / kThreads blocks must stay below 2^31
  M2S2L_CHECK(L < (int64_t(1) << 31) && batch < (int64_t(1) << 31) && dim < (int64_t(1) << 31) &&
                  batch * dim < (int64_t(1) << 33),
              "selective_scan: shape (batch, dim, seqlen) = ", u.sizes(), " too large for the CUDA backend ",
              "(batch * dim must be < 2^33, seqlen < 2^31)");
  check_cuda(delta, "delta", u);
  M2S2L_CHECK(delta.sizes() == u.sizes() && delta.scalar_type() == dt,
              "selective_scan: delta must match u in shape and dtype: (batch, dim, seqlen) ", u.sizes(), " ", dt,
              ", got ", delta.sizes(), " ", delta.scalar_type());
  M2S2L_CHECK(A.dim() == 2 && A.size(0) == dim, "selective_scan: A must be (dim, dstate), got ", A.sizes());
  const int64_t N = A.size(1);
  M2S2L_CHECK(N >= 1 && N <= 256, "selective_scan: dstate must be in 1..256, got ", N);
  keep.push_back(f32_input(A, "A", {dim, N}, u));
  SSParams p{};
  p.batch = (int)batch; p.dim = (int)dim; p.L = (int)L; p.N = (int)N;
  p.nchunks = (int)((L + kChunk - 1) / kChunk);
  p.softplus = delta_softplus;
  p.u = u.data_ptr(); p.u_sb = u.stride(0); p.u_sd = u.stride(1); p.u_sl = u.stride(2);
  p.delta = delta.data_ptr(); p.dl_sb = delta.stride(0); p.dl_sd = delta.stride(1); p.dl_sl = delta.stride(2);
  p.A = keep.back().data_ptr<float>();
  M2S2L_CHECK(B.scalar_type() == C.scalar_type() && (B.scalar_type() == dt || B.scalar_type() == at::kFloat),
              "selective_scan: B and C must share one dtype, either u's (", dt, ") or float32; got ",
              B.scalar_type(), " and ", C.scalar_type());
  set_bc(B, "B", u, N, p, true);
  set_bc(C, "C", u, N, p, false);
  if (D) { keep.push_back(f32_input(*D, "D", {dim}, u)); p.D = keep.back().data_ptr<float>(); }
  if (delta_bias) {
    keep.push_back(f32_input(*delta_bias, "delta_bias", {dim}, u));
    p.delta_bias = keep.back().data_ptr<float>();
  }
  if (z) {
    check_cuda(*z, "z", u);
    M2S2L_CHECK(z->sizes() == u.sizes() && z->scalar_type() == dt,
                "selective_scan: z must match u in shape and dtype, got ", z->sizes(), " ", z->scalar_type());
    p.z = z->data_ptr(); p.z_sb = z->stride(0); p.z_sd = z->stride(1); p.z_sl = z->stride(2);
  }
  return p;
}

int sm_count() {
  int dev = 0, n = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
  return n > 0 ? n : 132;
}

// Lane-group configuration by dstate; for dstate <= 16 with few rows, 16 lanes per row keep the GPU busy.
template <typename T, typename TW> cudaError_t launch(bool fwd, const SSParams& p, cudaStream_t s) {
  const int64_t rows = (int64_t)p.batch * p.dim;
#define M2S2L_GO(LN, NP) return fwd ? ss_fwd_launch<T, TW, LN, NP>(p, s) : ss_bwd_launch<T, TW, LN, NP>(p, s)
  if (p.N <= 16) {
    if (p.N <= 4 || rows * 4 >= (int64_t)sm_count() * 1024) M2S2L_GO(4, 4);
    M2S2L_GO(16, 1);
  }
  if (p.N <= 64) M2S2L_GO(16, 4);
  M2S2L_GO(32, 8);
#undef M2S2L_GO
}

void run(bool fwd, const SSParams& p, at::ScalarType dt, at::ScalarType wt) {
  if ((int64_t)p.batch * p.dim == 0) return;
  auto s = c10::cuda::getCurrentCUDAStream().stream();
  const bool wf = wt == at::kFloat;
  cudaError_t e;
  if (dt == at::kFloat) e = launch<float, float>(fwd, p, s);
  else if (dt == at::kHalf) e = wf ? launch<__half, float>(fwd, p, s) : launch<__half, __half>(fwd, p, s);
  else e = wf ? launch<__nv_bfloat16, float>(fwd, p, s) : launch<__nv_bfloat16, __nv_bfloat16>(fwd, p, s);
  M2S2L_CHECK(e == cudaSuccess, "selective_scan ", fwd ? "forward" : "backward", " kernel launch failed: ",
              cudaGetErrorString(e));
}

}  // namespace

std::vector<at::Tensor> selective_scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                           const at::Tensor& B, const at::Tensor& C, const OptT& D, const OptT& z,
                                           const OptT& delta_bias, const OptT& initial_state, bool delta_softplus,
                                           bool save_states) {
  c10::cuda::CUDAGuard guard(u.device());
  std::vector<at::Tensor> keep;
  SSParams p = make_params(u, delta, A, B, C, D, z, delta_bias, delta_softplus, keep);
  const auto f32 = u.options().dtype(at::kFloat);
  if (initial_state) {
    keep.push_back(f32_input(*initial_state, "initial_state", {p.batch, p.dim, p.N}, u));
    p.init = keep.back().data_ptr<float>();
  }
  at::Tensor out = at::empty({p.batch, p.dim, p.L}, u.options());
  at::Tensor last = at::empty({p.batch, p.dim, p.N}, f32);
  at::Tensor saved = save_states ? at::empty({p.batch, p.dim, p.nchunks, p.N}, f32) : at::empty({0}, f32);
  p.out = out.data_ptr(); p.last = last.data_ptr<float>(); p.saved = save_states ? saved.data_ptr<float>() : nullptr;
  run(true, p, u.scalar_type(), B.scalar_type());
  return {out, last, saved};
}

std::vector<at::Tensor> selective_scan_bwd(const at::Tensor& dout, const OptT& dlast, const at::Tensor& u,
                                           const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                                           const at::Tensor& C, const OptT& D, const OptT& z,
                                           const OptT& delta_bias, const at::Tensor& saved_states,
                                           bool delta_softplus, bool need_dinitial) {
  c10::cuda::CUDAGuard guard(u.device());
  std::vector<at::Tensor> keep;
  SSParams p = make_params(u, delta, A, B, C, D, z, delta_bias, delta_softplus, keep);
  const auto f32 = u.options().dtype(at::kFloat);
  check_cuda(dout, "dout", u);
  M2S2L_CHECK(dout.sizes() == u.sizes() && dout.scalar_type() == u.scalar_type(),
              "selective_scan: dout must match u in shape and dtype, got ", dout.sizes(), " ", dout.scalar_type());
  p.dout = dout.data_ptr(); p.do_sb = dout.stride(0); p.do_sd = dout.stride(1); p.do_sl = dout.stride(2);
  keep.push_back(f32_input(saved_states, "saved_states", {p.batch, p.dim, p.nchunks, p.N}, u));
  p.saved = keep.back().data_ptr<float>();
  if (dlast) {
    keep.push_back(f32_input(*dlast, "dlast_state", {p.batch, p.dim, p.N}, u));
    p.dlast = keep.back().data_ptr<float>();
  }
  at::Tensor du = at::empty({p.batch, p.dim, p.L}, u.options());
  at::Tensor ddelta = at::empty({p.batch, p.dim, p.L}, u.options());
  at::Tensor dz = z ? at::empty({p.batch, p.dim, p.L}, u.options()) : at::Tensor();
  at::Tensor dA = at::zeros({p.dim, p.N}, f32);
  at::Tensor dB = at::zeros(B.sizes(), f32), dC = at::zeros(C.sizes(), f32);
  at::Tensor dD = D ? at::zeros({p.dim}, f32) : at::Tensor();
  at::Tensor dbias = delta_bias ? at::zeros({p.dim}, f32) : at::Tensor();
  at::Tensor dinit = need_dinitial ? at::empty({p.batch, p.dim, p.N}, f32) : at::Tensor();
  p.du = du.data_ptr(); p.ddelta = ddelta.data_ptr(); p.dz = z ? dz.data_ptr() : nullptr;
  p.dA = dA.data_ptr<float>(); p.dB = dB.data_ptr<float>(); p.dC = dC.data_ptr<float>();
  p.dD = D ? dD.data_ptr<float>() : nullptr;
  p.ddelta_bias = delta_bias ? dbias.data_ptr<float>() : nullptr;
  p.dinit = need_dinitial ? dinit.data_ptr<float>() : nullptr;
  run(false, p, u.scalar_type(), B.scalar_type());
  return {du, ddelta, dA, dB, dC, dD, dz, dbias, dinit};
}

}  // namespace m2s2l
