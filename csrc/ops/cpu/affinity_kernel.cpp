// CPU backend of unsam::affinity: cosine tiles by GEMM, then threshold + pack.
//
// The graph is symmetric, so only the upper block triangle is multiplied (each
// row tile against the columns from its own first row on: half the flops of
// the full product, which dominates at C = 768) and the lower triangle is the
// transpose of the upper one, 32 x 32 bits at a time. As a bonus the bit graph
// is exactly symmetric (two GEMM tiles can round S_ij and S_ji differently).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops/affinity.h"

namespace unsam::ops {
namespace {

// Rows per cosine tile: at most 256, and at most about 4 M floats (16 MB) per
// tile, so the N x N cosine matrix never exists at once (N = 10000 would be
// 400 MB). Smaller tiles multiply less of the lower triangle: at N = 3600,
// C = 768 the upper block triangle of 256-row tiles is 52 % of the full product
// (1184-row tiles: 66 %), 64 ms against 81 ms on 2 cores (256 to 512 rows were
// within 3 % of each other; 128 slower). A multiple of 32, so that tiles start
// on word boundaries.
int64_t affinity_tile_rows(int64_t n) {
  const int64_t cap = std::min<int64_t>(256, (int64_t{1} << 22) / std::max<int64_t>(n, 1));
  const int64_t t = std::max<int64_t>(64, std::min<int64_t>(n, cap));
  return (t + 31) / 32 * 32;
}

// Threshold rows of cosines s [rows, n - c0] (columns c0.. of the graph, c0 a
// multiple of 32) into the words c0 / 32.. of the packed rows.
void pack_rows(const float* s, int64_t rows, int64_t n, int64_t c0, float tau, int32_t* bits) {
  const int64_t w = packed_words(n);
  const int64_t width = n - c0;
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = s + r * width;
      uint32_t* out = reinterpret_cast<uint32_t*>(bits + r * w);
      for (int64_t k = c0 / 32; k < w; ++k) {
        const int64_t j0 = k * 32;
        const int64_t j1 = std::min<int64_t>(n, j0 + 32);
        uint32_t word = 0;
        for (int64_t j = j0; j < j1; ++j) word |= static_cast<uint32_t>(row[j - c0] > tau) << (j - j0);
        out[k] = word;
      }
    }
  });
}

// In-place transpose of a 32 x 32 bit matrix: a[i] bit j <-> a[j] bit i (bit j of
// a word is column j, as in the packed graph). Hacker's Delight, section 7-3.
void transpose32(uint32_t* a) {
  uint32_t m = 0x0000FFFFu;
  for (int j = 16; j != 0; j >>= 1, m ^= (m << j)) {
    for (int k = 0; k < 32; k = (k + j + 1) & ~j) {
      const uint32_t t = ((a[k] >> j) ^ a[k + j]) & m;
      a[k] ^= t << j;
      a[k + j] ^= t;
    }
  }
}

// The lower block triangle (columns before each row tile's first row) from the
// upper one: block (row block i, column block j) = transpose of block (j, i).
void mirror_lower(int32_t* bits, int64_t n, int64_t tile) {
  const int64_t w = packed_words(n);
  const int64_t blocks = w;  // 32-row blocks
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    uint32_t blk[32];
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t first_col_block = (bi * 32) / tile * tile / 32;  // computed from here on
      for (int64_t bj = 0; bj < first_col_block; ++bj) {
        for (int k = 0; k < 32; ++k) {
          const int64_t src = bj * 32 + k;
          blk[k] = src < n ? reinterpret_cast<const uint32_t*>(bits)[src * w + bi] : 0u;
        }
        transpose32(blk);
        for (int k = 0; k < 32; ++k) {
          const int64_t dst = bi * 32 + k;
          if (dst < n) reinterpret_cast<uint32_t*>(bits)[dst * w + bj] = blk[k];
        }
      }
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
    int32_t* bg = bits.data_ptr<int32_t>() + g * n * w;
    for (int64_t r0 = 0; r0 < n; r0 += tile) {
      const int64_t t = std::min(tile, n - r0);
      // [t, n - r0] cosines: this tile's rows against the columns from its first row on.
      auto s = at::mm(fg.narrow(0, r0, t), fg.narrow(0, r0, n - r0).t()).contiguous();
      pack_rows(s.data_ptr<float>(), t, n, r0, static_cast<float>(tau), bg + r0 * w);
    }
    mirror_lower(bg, n, tile);
    int32_t* cg = counts.data_ptr<int32_t>() + g * n;
    at::parallel_for(0, n, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        int32_t cnt = 0;
        const uint32_t* row = reinterpret_cast<const uint32_t*>(bg + r * w);
        for (int64_t k = 0; k < w; ++k) cnt += __builtin_popcount(row[k]);
        cg[r] = cnt;
      }
    });
  }
  // Exact eps graph: d_i = (1 - eps) * |row i of bits| + eps * N.
  auto deg = counts.to(at::kDouble) * (1.0 - eps) + eps * static_cast<double>(n);
  return {bits, deg};
}

TORCH_LIBRARY_IMPL(unsam, CPU, m) { m.impl("affinity", TORCH_FN(affinity_cpu)); }

}  // namespace unsam::ops
