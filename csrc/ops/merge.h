// unsam::merge_levels — exact greedy agglomeration of UnSAM's conquer stage.
//
//   feats [B, H, W, C] float32 (raw key vectors), valid [B, H, W] bool or None,
//   thresholds: descending list of L similarities
//   -> labels [B, L, H, W] int64; -1 for invalid patches
//
// On the 4-neighbour grid, repeatedly merge the most similar adjacent pair of
// clusters while its similarity >= theta, for each theta in turn, state carried
// over (levels nest). Representative = sum of raw member features (float64);
// similarity = cosine of representatives in float64, computed with a fixed
// 8-lane summation order (see merge_similarity below) so the CPU kernel, the
// CUDA kernel and the Python oracle agree bit for bit.
// Cluster id = smallest member patch index (row-major). Ties: highest
// similarity first, then the lexicographically smallest (a, b), a < b.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <optional>
#include <vector>

#include "ops/common.h"

namespace unsam::ops {

inline void check_merge_args(const at::Tensor& feats, const std::optional<at::Tensor>& valid,
                             const std::vector<double>& thresholds) {
  UNSAM_CHECK_DIM(feats, 4, "merge_levels: feats");
  UNSAM_CHECK_DTYPE(feats, at::kFloat, "merge_levels: feats");
  TORCH_CHECK(feats.size(1) * feats.size(2) <= (int64_t{1} << 30),
              "merge_levels: H * W should be < 2^30, got shape ", shape_str(feats));
  TORCH_CHECK(!thresholds.empty(), "merge_levels: thresholds should not be empty");
  for (size_t i = 0; i < thresholds.size(); ++i) {
    TORCH_CHECK(std::isfinite(thresholds[i]), "merge_levels: thresholds[", i,
                "] should be finite, got ", thresholds[i]);
    if (i > 0) {
      TORCH_CHECK(thresholds[i] <= thresholds[i - 1],
                  "merge_levels: thresholds should be descending, got ", thresholds[i - 1],
                  " then ", thresholds[i]);
    }
  }
  if (valid.has_value()) {
    const auto& v = *valid;
    UNSAM_CHECK_DIM(v, 3, "merge_levels: valid");
    UNSAM_CHECK_DTYPE(v, at::kBool, "merge_levels: valid");
    TORCH_CHECK(v.size(0) == feats.size(0) && v.size(1) == feats.size(1) &&
                    v.size(2) == feats.size(2),
                "merge_levels: valid should have shape [B, H, W] = [", feats.size(0), ", ",
                feats.size(1), ", ", feats.size(2), "], got ", shape_str(v));
    UNSAM_CHECK_SAME_DEVICE(feats, v, "merge_levels: feats", "valid");
  }
}

// The summation order shared by every implementation: 8 interleaved partial
// sums (lane k takes channels k, k+8, ...), combined as a fixed tree. Without
// FMA contraction (-ffp-contract=off, --fmad=false) this is reproducible.
inline double merge_dot8(const double* a, const double* b, int64_t c) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= c; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  }
  for (int k = 0; i + k < c; ++k) acc[k] += a[i + k] * b[i + k];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// cos = dot / sqrt(|a|^2 |b|^2); 0 where either representative is zero.
inline double merge_similarity(double dot, double na2, double nb2) {
  const double den = na2 * nb2;
  return den > 0.0 ? dot / std::sqrt(den) : 0.0;
}

at::Tensor merge_levels_cpu(const at::Tensor& feats, const std::optional<at::Tensor>& valid,
                            at::ArrayRef<double> thresholds);

}  // namespace unsam::ops
