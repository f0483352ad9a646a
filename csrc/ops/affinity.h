// unsam::affinity — the thresholded cosine graph of MaskCut, bit-packed.
//
//   feats [B, N, C] (float32; bf16/fp16 on CUDA), valid [B, N] bool or None
//   -> bits [B, N, ceil(N/32)] int32: bit j of row i is 1 iff cos(f_i, f_j) > tau
//      deg  [B, N] float64: degrees of A = (1 - eps) * bits + eps * 1 1^T
//
// Invalid patches behave as MaskCut's zeroed features: their rows and columns
// are 0 (they stay in the graph through the eps edges).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "ops/common.h"

namespace unsam::ops {

inline void check_affinity_args(const at::Tensor& feats, const std::optional<at::Tensor>& valid,
                                double tau, double eps) {
  UNSAM_CHECK_DIM(feats, 3, "affinity: feats");
  TORCH_CHECK(feats.is_floating_point(), "affinity: feats should be floating point, got ",
              feats.scalar_type());
  TORCH_CHECK(feats.size(1) >= 1, "affinity: feats should have N >= 1 patches, got shape ",
              shape_str(feats));
  TORCH_CHECK(feats.size(2) >= 1, "affinity: feats should have C >= 1 channels, got shape ",
              shape_str(feats));
  check_int32_count(feats.size(1), "affinity", "N (patches)");
  check_finite(feats, "affinity", "feats");
  TORCH_CHECK(eps >= 0.0 && eps < 1.0, "affinity: eps should be in [0, 1), got ", eps);
  TORCH_CHECK(tau >= -1.0 && tau <= 1.0, "affinity: tau should be in [-1, 1], got ", tau);
  if (valid.has_value()) {
    const auto& v = *valid;
    UNSAM_CHECK_DIM(v, 2, "affinity: valid");
    UNSAM_CHECK_DTYPE(v, at::kBool, "affinity: valid");
    TORCH_CHECK(v.size(0) == feats.size(0) && v.size(1) == feats.size(1),
                "affinity: valid should have shape [B, N] = [", feats.size(0), ", ",
                feats.size(1), "], got ", shape_str(v));
    UNSAM_CHECK_SAME_DEVICE(feats, v, "affinity: feats", "valid");
  }
}

std::tuple<at::Tensor, at::Tensor> affinity_cpu(const at::Tensor& feats,
                                                const std::optional<at::Tensor>& valid,
                                                double tau, double eps);

}  // namespace unsam::ops
