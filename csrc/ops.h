// Host entry points of the m2s2l._C extension (bound in bindings.cpp).
#pragma once
#include <torch/extension.h>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <vector>

// Argument checks of the extension. Not TORCH_CHECK: on the GPU machine (torch 2.11+cu130, g++ 13.3) every
// c10::Error thrown from code compiled into an extension -- ours or a minimal load_inline one -- killed the
// process with SIGSEGV, while a std::runtime_error thrown from the same place reached Python as RuntimeError
// (csrc/tools/probe_throw_inline.py). So the message is formatted here and thrown as std::runtime_error, which
// pybind11 turns into RuntimeError without going through torch's exception translator.
namespace m2s2l {
namespace detail {
template <typename... Args>
[[noreturn]] void check_fail(const Args&... args) {
  std::ostringstream ss;
  (ss << ... << args);
  throw std::runtime_error(ss.str());
}
}  // namespace detail
}  // namespace m2s2l
#define M2S2L_CHECK(cond, ...)                                    \
  do {                                                            \
    if (!(cond)) ::m2s2l::detail::check_fail(__VA_ARGS__);        \
  } while (0)

namespace m2s2l {
using OptT = std::optional<at::Tensor>;

// -> {out, last_state, saved_states}; saved_states is empty unless save_states.
std::vector<at::Tensor> selective_scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                           const at::Tensor& B, const at::Tensor& C, const OptT& D, const OptT& z,
                                           const OptT& delta_bias, const OptT& initial_state, bool delta_softplus,
                                           bool save_states);
// -> {du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state}; absent inputs give empty tensors.
std::vector<at::Tensor> selective_scan_bwd(const at::Tensor& dout, const OptT& dlast, const at::Tensor& u,
                                           const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                                           const at::Tensor& C, const OptT& D, const OptT& z,
                                           const OptT& delta_bias, const at::Tensor& saved_states,
                                           bool delta_softplus, bool need_dinitial);
// -> {out, final_states}; final_states is empty unless return_final_states.
std::vector<at::Tensor> causal_conv1d_fwd(const at::Tensor& x, const at::Tensor& weight, const OptT& bias,
                                          const OptT& initial_states, bool silu, bool return_final_states);
// -> {dx, dweight, dbias, dinitial_states}; dbias / dinitial_states empty when not asked for.
std::vector<at::Tensor> causal_conv1d_bwd(const at::Tensor& x, const at::Tensor& weight, const OptT& bias,
                                          const OptT& initial_states, const at::Tensor& dout,
                                          const OptT& dfinal_states, bool silu, bool need_dbias,
                                          bool need_dinitial);
}  // namespace m2s2l
