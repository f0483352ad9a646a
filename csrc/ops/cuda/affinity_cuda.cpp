// CUDA backend of unsam::affinity: cosine tiles by cuBLAS, then threshold +
// pack in affinity_kernel.cu.
//
// Compiled by the host compiler in a unity batch with the CPU kernels: every
// name at namespace scope carries the op's name (anonymous namespaces of a
// unity batch are one namespace).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "ops/affinity.h"
#include "ops/cuda/launchers.h"

namespace unsam::ops {

// Elements of one float32 cosine tile [graphs, rows, n]: 2^28 (1 GiB), so the
// B x N x N matrix never exists at once for big inputs while small inputs go
// in a single GEMM.
constexpr int64_t kAffinityCudaTileElems = int64_t{1} << 28;

std::tuple<at::Tensor, at::Tensor> affinity_cuda(const at::Tensor& feats,
                                                 const std::optional<at::Tensor>& valid,
                                                 double tau, double eps) {
  check_affinity_args(feats, valid, tau, eps);
  TORCH_CHECK(feats.is_cuda(), "affinity: feats should be a CUDA tensor, got ", feats.device());
  const auto dtype = feats.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 ||
                  dtype == at::kDouble,
              "affinity: feats on CUDA should be float32, float16, bfloat16 or float64, got ",
              dtype);
  c10::cuda::CUDAGuard device_guard(feats.device());
  const int64_t b = feats.size(0), n = feats.size(1);
  const int64_t w = packed_words(n);
  auto bits = at::empty({b, n, w}, feats.options().dtype(at::kInt));
  auto counts = at::empty({b, n}, feats.options().dtype(at::kInt));
  if (b == 0) {
    return {bits, counts.to(at::kDouble)};
  }
  // Normalise in float32 exactly as the CPU kernel does (F / max(|F|, 1e-12),
  // then zero the invalid rows); float64 input is computed in float32 there too.
  auto f = feats.to(at::kFloat);
  f = f / f.norm(2, {-1}, true).clamp_min(1e-12);
  if (valid.has_value()) {
    f = f * valid->unsqueeze(-1).to(at::kFloat);
  }
  // The GEMM runs in the input precision for half types (tensor cores, fp32
  // accumulate) with a float32 result, so the threshold sees the accumulated
  // value, not one rounded back to 8 or 11 mantissa bits.
  const bool half_gemm = dtype == at::kHalf || dtype == at::kBFloat16;
  if (half_gemm) f = f.to(dtype);
  f = f.contiguous();
  auto ft = f.transpose(1, 2);  // [b, C, n]: cuBLAS takes the transposed operand as is

  // Tile over graphs only when a single cosine row of the whole batch is too big.
  const int64_t gb = b * n <= kAffinityCudaTileElems
                         ? b
                         : std::max<int64_t>(1, kAffinityCudaTileElems / n);
  const int64_t tile = std::clamp<int64_t>(kAffinityCudaTileElems / (gb * n), 1, n);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  // Float32 cosines must be IEEE float32 products, not TF32 (10-bit mantissa
  // inputs would move edges near tau whatever the global allow_tf32 flag says).
  at::NoTF32Guard affinity_no_tf32;
  for (int64_t g0 = 0; g0 < b; g0 += gb) {
    const int64_t gn = std::min(gb, b - g0);
    auto fg = f.narrow(0, g0, gn);
    auto fgt = ft.narrow(0, g0, gn);
    for (int64_t r0 = 0; r0 < n; r0 += tile) {
      const int64_t t = std::min(tile, n - r0);
      auto rows = fg.narrow(1, r0, t);
      auto s = half_gemm ? at::bmm(rows, fgt, at::kFloat) : at::bmm(rows, fgt);
      s = s.contiguous();  // [gn, t, n]
      const cudaError_t err = unsam::cuda::affinity_pack_launch(
          s.data_ptr<float>(), gn, t, n, static_cast<float>(tau),
          bits.data_ptr<int32_t>() + (g0 * n + r0) * w, counts.data_ptr<int32_t>() + g0 * n + r0,
          stream.stream());
      TORCH_CHECK(err == cudaSuccess, "affinity: CUDA kernel launch failed: ",
                  cudaGetErrorString(err));
    }
  }
  // Exact eps graph, the same expression as the CPU kernel.
  auto deg = counts.to(at::kDouble) * (1.0 - eps) + eps * static_cast<double>(n);
  return {bits, deg};
}

TORCH_LIBRARY_IMPL(unsam, CUDA, m) { m.impl("affinity", TORCH_FN(affinity_cuda)); }

}  // namespace unsam::ops
