// Host entry points of the m2s2l._C extension (bound in bindings.cpp).
#pragma once
#include <torch/extension.h>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

// Argument checks of the extension. Neither TORCH_CHECK nor any std::ostringstream: on the GPU machine (torch
// 2.11+cu130, g++ 13.3, pybind11 3.1) a minimal load_inline extension (csrc/tools/probe_throw_inline.py) died with
// SIGSEGV whenever its error message was formatted with an ostringstream (c10::str inside TORCH_CHECK, or by hand)
// before the throw, while a std::runtime_error with a literal message reached Python as RuntimeError. So messages
// are built by string concatenation here (to_str) and thrown as std::runtime_error.
namespace m2s2l {
namespace detail {
inline std::string to_str(const char* s) { return s; }
inline std::string to_str(const std::string& s) { return s; }
inline std::string to_str(bool v) { return v ? "true" : "false"; }
inline std::string to_str(c10::ScalarType t) { return c10::toString(t); }
inline std::string to_str(const c10::Device& d) { return d.str(); }
inline std::string to_str(c10::IntArrayRef a) {
  std::string s = "[";
  for (size_t i = 0; i < a.size(); ++i) s += (i ? ", " : "") + std::to_string(a[i]);
  return s + "]";
}
template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
std::string to_str(T v) { return std::to_string(v); }

template <typename... Args>
[[noreturn]] void check_fail(const Args&... args) {
  std::string msg;
  ((msg += to_str(args)), ...);
  throw std::runtime_error(msg);
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
