// Causal depthwise conv1d host code: argument checks, output allocation, dtype and width-bucket dispatch.
#include "ops.h"
#include "causal_conv1d/causal_conv1d.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace m2s2l {
namespace {

constexpr int kMaxWidth = 16;

void check_same(const at::Tensor& t, const char* name, const at::Tensor& x) {
  M2S2L_CHECK(t.is_cuda() && t.device() == x.device(), "causal_conv1d: ", name, " must be a CUDA tensor on ",
              x.device(), ", got ", t.device());
}

ConvParams make_params(const at::Tensor& x, const at::Tensor& weight, const OptT& bias, const OptT& init,
                       bool silu, std::vector<at::Tensor>& keep) {
  M2S2L_CHECK(x.is_cuda(), "causal_conv1d: x must be a CUDA tensor");
  M2S2L_CHECK(x.dim() == 3, "causal_conv1d: x must be (batch, dim, seqlen), got ", x.sizes());
  const auto dt = x.scalar_type();
  M2S2L_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "causal_conv1d: x must be float32, float16 or bfloat16, got ", dt);
  const int64_t batch = x.size(0), dim = x.size(1), L = x.size(2);
  // int32 fields in ConvParams; a 1-D grid of batch * dim * ceil(L / kConvTile) / kConvThreads blocks < 2^31
  M2S2L_CHECK(L < (int64_t(1) << 31) && batch < (int64_t(1) << 31) && dim < (int64_t(1) << 31) &&
                  batch * dim * ((L + kConvTile - 1) / kConvTile) < (int64_t(1) << 37),
              "causal_conv1d: shape (batch, dim, seqlen) = ", x.sizes(), " too large for the CUDA backend");
  check_same(weight, "weight", x);
  M2S2L_CHECK(weight.dim() == 2 && weight.size(0) == dim, "causal_conv1d: weight must be (dim, width) with dim = ",
              dim, ", got ", weight.sizes());
  const int64_t W = weight.size(1);
  M2S2L_CHECK(W >= 1 && W <= kMaxWidth, "causal_conv1d: the CUDA backend supports width 1..", kMaxWidth,
              ", got ", W);
  keep.push_back(weight.to(at::kFloat).contiguous());
  ConvParams p{};
  p.batch = (int)batch; p.dim = (int)dim; p.L = (int)L; p.W = (int)W; p.silu = silu;
  p.x = x.data_ptr(); p.x_sb = x.stride(0); p.x_sd = x.stride(1); p.x_sl = x.stride(2);
  p.weight = keep.back().data_ptr<float>();
  if (bias) {
    check_same(*bias, "bias", x);
    M2S2L_CHECK(bias->dim() == 1 && bias->size(0) == dim, "causal_conv1d: bias must be (dim,) = (", dim,
                ",), got ", bias->sizes());
    keep.push_back(bias->to(at::kFloat).contiguous());
    p.bias = keep.back().data_ptr<float>();
  }
  if (init && W > 1) {
    check_same(*init, "initial_states", x);
    M2S2L_CHECK(init->sizes() == at::IntArrayRef({batch, dim, W - 1}),
                "causal_conv1d: initial_states must be (batch, dim, width - 1) = (", batch, ", ", dim, ", ", W - 1,
                "), got ", init->sizes());
    keep.push_back(init->to(dt).contiguous());
    p.init = keep.back().data_ptr();
  }
  const int ntiles = (int)((L + kConvTile - 1) / kConvTile);
  p.batch_major = ntiles == 1 && batch >= 32;
  return p;
}

template <typename T> cudaError_t launch(bool fwd, const ConvParams& p, cudaStream_t s) {
#define M2S2L_GO(WM) return fwd ? conv_fwd_launch<T, WM>(p, s) : conv_bwd_launch<T, WM>(p, s)
  if (p.W <= 4) M2S2L_GO(4);
  if (p.W <= 8) M2S2L_GO(8);
  M2S2L_GO(16);
#undef M2S2L_GO
}

void run(bool fwd, const ConvParams& p, at::ScalarType dt) {
  if ((int64_t)p.batch * p.dim * p.L == 0) return;
  auto s = c10::cuda::getCurrentCUDAStream().stream();
  cudaError_t e = dt == at::kFloat ? launch<float>(fwd, p, s)
                  : dt == at::kHalf ? launch<__half>(fwd, p, s) : launch<__nv_bfloat16>(fwd, p, s);
  M2S2L_CHECK(e == cudaSuccess, "causal_conv1d ", fwd ? "forward" : "backward", " kernel launch failed: ",
              cudaGetErrorString(e));
}

}  // namespace

std::vector<at::Tensor> causal_conv1d_fwd(const at::Tensor& x, const at::Tensor& weight, const OptT& bias,
                                          const OptT& initial_states, bool silu, bool return_final_states) {
  c10::cuda::CUDAGuard guard(x.device());
  std::vector<at::Tensor> keep;
  ConvParams p = make_params(x, weight, bias, initial_states, silu, keep);
  at::Tensor out = at::empty({p.batch, p.dim, p.L}, x.options());
  at::Tensor fin = return_final_states ? at::empty({p.batch, p.dim, p.W - 1}, x.options()) : at::Tensor();
  p.out = out.data_ptr();
  p.final_states = (return_final_states && p.W > 1) ? fin.data_ptr() : nullptr;
  if (p.L == 0 && p.final_states) {  // nothing to convolve: the final states are the initial ones
    if (initial_states) fin.copy_(*initial_states); else fin.zero_();
    return {out, fin};
  }
  run(true, p, x.scalar_type());
  return {out, fin};
}

std::vector<at::Tensor> causal_conv1d_bwd(const at::Tensor& x, const at::Tensor& weight, const OptT& bias,
                                          const OptT& initial_states, const at::Tensor& dout,
                                          const OptT& dfinal_states, bool silu, bool need_dbias,
                                          bool need_dinitial) {
  c10::cuda::CUDAGuard guard(x.device());
  std::vector<at::Tensor> keep;
  ConvParams p = make_params(x, weight, bias, initial_states, silu, keep);
  check_same(dout, "dout", x);
  M2S2L_CHECK(dout.sizes() == x.sizes() && dout.scalar_type() == x.scalar_type(),
              "causal_conv1d: dout must match x in shape and dtype, got ", dout.sizes(), " ", dout.scalar_type());
  p.dout = dout.data_ptr(); p.do_sb = dout.stride(0); p.do_sd = dout.stride(1); p.do_sl = dout.stride(2);
  if (dfinal_states && p.W > 1) {
    check_same(*dfinal_states, "dfinal_states", x);
    M2S2L_CHECK(dfinal_states->sizes() == at::IntArrayRef({p.batch, p.dim, p.W - 1}),
                "causal_conv1d: dfinal_states must be (batch, dim, width - 1), got ", dfinal_states->sizes());
    keep.push_back(dfinal_states->to(x.scalar_type()).contiguous());
    p.dfinal = keep.back().data_ptr();
  }
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor dx = at::empty({p.batch, p.dim, p.L}, x.options());
  at::Tensor dw = at::zeros({p.dim, p.W}, f32);
  at::Tensor db = need_dbias ? at::zeros({p.dim}, f32) : at::Tensor();
  at::Tensor dinit = need_dinitial ? at::zeros({p.batch, p.dim, p.W - 1}, x.options()) : at::Tensor();
  p.dx = dx.data_ptr(); p.dweight = dw.data_ptr<float>(); p.dbias = need_dbias ? db.data_ptr<float>() : nullptr;
  p.dinit = (need_dinitial && p.W > 1) ? dinit.data_ptr() : nullptr;
  if (p.L == 0) {  // the gradient of the final states flows straight into the initial ones
    if (p.dinit && p.dfinal) dinit.copy_(*dfinal_states);
    return {dx, dw, db, dinit};
  }
  run(false, p, x.scalar_type());
  return {dx, dw, db, dinit};
}

}  // namespace m2s2l
