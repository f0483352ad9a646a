// CPU backend of unsam::affinity: cosine tiles by GEMM, then threshold + pack.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops/affinity.h"

namespace unsam::ops {
namespace {

// Rows per cosine tile: about 4 M floats (16 MB) per tile, so the N x N
// cosine matrix never exists at once (N = 10000 would be 400 MB).
int64_t affinity_tile_rows(int64_t n) {
  return std::max<int64_t>(64, std::min<int64_t>(n, (int64_t{1} << 22) / std::max<int64_t>(n, 1)));
}

void pack_rows(const float* s, int64_t rows, int64_t n, float tau, int32_t* bits,
               int32_t* counts) {
  const int64_t w = packed_words(n);
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = s + r * n;
      uint32_t* out = reinterpret_cast<uint32_t*>(bits + r * w);
      int32_t cnt = 0;
      for (int64_t k = 0; k < w; ++k) {
        const int64_t j0 = k * 32;
        const int64_t j1 = std::min<int64_t>(n, j0 + 32);
        uint32_t word = 0;
        for (int64_t j = j0; j < j1; ++j) word |= static_cast<uint32_t>(row[j] > tau) << (j - j0);
        out[k] = word;
        cnt += __builtin_popcount(word);
      }
      counts[r] = cnt;
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> affinity_cpu(const at::Tensor& feats,
                                                const std::optional<at::Tensor>& valid,
                                                double tau, double eps) {
  check_affinity_args(feats, valid, tau, eps);
  TORCH_CHECK(feats.scalar_type() == at::kFloat || feats.scalar_type() == at::kDouble,
              "affinity: feats on CPU should be float32 or float64, got ", feats.scalar_type());
  const int64_t b = feats.size(0), n = feats.size(1);
  const int64_t w = packed_words(n);
  auto bits = at::zeros({b, n, w}, feats.options().dtype(at::kInt));
  auto counts = at::zeros({b, n}, feats.options().dtype(at::kInt));
  if (b == 0) {
    return {bits, counts.to(at::kDouble)};
  }
  // Normalise as MaskCut does (F / max(|F|, 1e-12)): a zero vector stays zero.
  auto f = feats.to(at::kFloat);
  f = f / f.norm(2, {-1}, true).clamp_min(1e-12);
  if (valid.has_value()) {
    f = f * valid->unsqueeze(-1).to(at::kFloat);
  }
  f = f.contiguous();
  const int64_t tile = affinity_tile_rows(n);
  for (int64_t g = 0; g < b; ++g) {
    auto fg = f[g];
    auto fgt = fg.t();
    for (int64_t r0 = 0; r0 < n; r0 += tile) {
      const int64_t t = std::min(tile, n - r0);
      auto s = at::mm(fg.narrow(0, r0, t), fgt).contiguous();  // [t, n] cosines
      pack_rows(s.data_ptr<float>(), t, n, static_cast<float>(tau),
                bits.data_ptr<int32_t>() + (g * n + r0) * w,
                counts.data_ptr<int32_t>() + g * n + r0);
    }
  }
  // Exact eps graph: d_i = (1 - eps) * |row i of bits| + eps * N.
  auto deg = counts.to(at::kDouble) * (1.0 - eps) + eps * static_cast<double>(n);
  return {bits, deg};
}

TORCH_LIBRARY_IMPL(unsam, CPU, m) { m.impl("affinity", TORCH_FN(affinity_cpu)); }

}  // namespace unsam::ops
