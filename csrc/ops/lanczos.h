// unsam::lanczos_fiedler — the Fiedler vector of the MaskCut graph.
//
//   bits [B, N, W] int32 (from unsam::affinity), deg [B, N] float64,
//   x0 [B, N] or None (warm start, e.g. the previous cut's vector)
//   -> x [B, N] float64, lam [B] float64, iters [B] int64
//
// Solves (D - A) x = lam D x for the second-smallest lam, A = (1 - eps) bits
// + eps 1 1^T, through Lanczos on M = D^-1/2 A D^-1/2 with sqrt(d) (the top
// eigenvector, eigenvalue 1) deflated and full reorthogonalisation. x is
// D-normalised (x^T D x = 1) like scipy's generalized eigh; sign rule: the
// entry of largest |x| (first such index) is positive.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "ops/common.h"

namespace unsam::ops {

inline void check_lanczos_args(const at::Tensor& bits, const at::Tensor& deg,
                               const std::optional<at::Tensor>& x0, double eps, double tol,
                               int64_t max_iter) {
  UNSAM_CHECK_DIM(bits, 3, "lanczos_fiedler: bits");
  UNSAM_CHECK_DTYPE(bits, at::kInt, "lanczos_fiedler: bits");
  UNSAM_CHECK_DIM(deg, 2, "lanczos_fiedler: deg");
  UNSAM_CHECK_DTYPE(deg, at::kDouble, "lanczos_fiedler: deg");
  const int64_t n = bits.size(1);
  TORCH_CHECK(n >= 2, "lanczos_fiedler: a graph needs N >= 2 nodes for a Fiedler vector, got N = ",
              n);
  TORCH_CHECK(bits.size(2) == packed_words(n), "lanczos_fiedler: bits should have shape [B, N, ",
              packed_words(n), "] for N = ", n, ", got ", shape_str(bits));
  TORCH_CHECK(deg.size(0) == bits.size(0) && deg.size(1) == n,
              "lanczos_fiedler: deg should have shape [B, N] = [", bits.size(0), ", ", n,
              "], got ", shape_str(deg));
  UNSAM_CHECK_SAME_DEVICE(bits, deg, "lanczos_fiedler: bits", "deg");
  check_int32_count(n, "lanczos_fiedler", "N (nodes)");
  check_finite(deg, "lanczos_fiedler", "deg");
  TORCH_CHECK_VALUE(deg.numel() == 0 || deg.min().item<double>() > 0.0,
                    "lanczos_fiedler: deg should be positive (the degrees of an eps graph), got a minimum of ",
                    deg.numel() ? deg.min().item<double>() : 0.0);
  TORCH_CHECK(eps > 0.0 && eps < 1.0,
              "lanczos_fiedler: eps should be in (0, 1) so every degree is positive, got ", eps);
  TORCH_CHECK(tol > 0.0, "lanczos_fiedler: tol should be > 0, got ", tol);
  TORCH_CHECK(max_iter >= 1, "lanczos_fiedler: max_iter should be >= 1, got ", max_iter);
  if (x0.has_value()) {
    const auto& v = *x0;
    UNSAM_CHECK_DIM(v, 2, "lanczos_fiedler: x0");
    TORCH_CHECK(v.is_floating_point(), "lanczos_fiedler: x0 should be floating point, got ",
                v.scalar_type());
    TORCH_CHECK(v.size(0) == bits.size(0) && v.size(1) == n,
                "lanczos_fiedler: x0 should have shape [B, N] = [", bits.size(0), ", ", n,
                "], got ", shape_str(v));
    UNSAM_CHECK_SAME_DEVICE(bits, v, "lanczos_fiedler: bits", "x0");
    check_finite(v, "lanczos_fiedler", "x0");
  }
}

// Deterministic start vector entry i (a fixed hash; never orthogonal to the
// Fiedler vector in practice, and identical on CPU and CUDA).
inline double lanczos_start_value(int64_t i) {
  uint64_t z = static_cast<uint64_t>(i) + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z = z ^ (z >> 31);
  return static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0) - 0.5;
}

// A warm start x0 is mixed with this much of the (unit) hash vector: a start
// that is exactly an eigenvector of the new graph (e.g. the previous cut's
// vector on the covered patches) would otherwise end Lanczos at once on that
// eigenpair, which need not be the top one.
constexpr double kLanczosWarmMix = 1e-2;

std::tuple<at::Tensor, at::Tensor, at::Tensor> lanczos_fiedler_cpu(
    const at::Tensor& bits, const at::Tensor& deg, const std::optional<at::Tensor>& x0,
    double eps, double tol, int64_t max_iter);

}  // namespace unsam::ops
