// Host entry points of the m2s2l._C extension (bound in bindings.cpp).
#pragma once
#include <torch/extension.h>
#include <optional>
#include <vector>

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
