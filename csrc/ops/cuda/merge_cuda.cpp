// CUDA backend of unsam::merge_levels: one thread block per region, regions
// in parallel (merge_kernel.cu); labels bit-identical to the CPU kernel.
//
// Compiled in a unity batch with the CPU kernels: namespace-scope names carry
// the op's name.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/cuda/launchers.h"
#include "ops/merge.h"

namespace unsam::ops {

// Workspace in flight at once (float64 sums dominate: 6 MB per 32 x 32 x 768
// region); more regions than fit run as successive chunks on the stream.
constexpr int64_t kMergeCudaWorkspaceBudget = int64_t{2} << 30;

at::Tensor merge_levels_cuda(const at::Tensor& feats_in, const std::optional<at::Tensor>& valid_in,
                             at::ArrayRef<double> thresholds) {
  std::vector<double> thr(thresholds.begin(), thresholds.end());
  check_merge_args(feats_in, valid_in, thr);
  TORCH_CHECK(feats_in.is_cuda(), "merge_levels: feats should be a CUDA tensor, got ",
              feats_in.device());
  // The CPU kernel checks its rows while it reads them; here a separate pass.
  check_finite(feats_in, "merge_levels", "feats");
  c10::cuda::CUDAGuard device_guard(feats_in.device());
  const int64_t b = feats_in.size(0), h = feats_in.size(1), w = feats_in.size(2),
                c = feats_in.size(3);
  const int64_t levels = static_cast<int64_t>(thr.size());
  auto labels = at::empty({b, levels, h, w}, feats_in.options().dtype(at::kLong));
  if (b == 0 || h == 0 || w == 0) return labels;
  auto feats = feats_in.contiguous();
  at::Tensor valid;
  if (valid_in.has_value()) valid = valid_in->contiguous();

  unsam::cuda::MergeLevelsPlan plan;
  cudaError_t err = unsam::cuda::merge_levels_plan(h, w, c, feats.get_device(), &plan);
  TORCH_CHECK(err == cudaSuccess, "merge_levels: could not query the CUDA device: ",
              cudaGetErrorString(err));
  const int64_t chunk =
      std::clamp<int64_t>(kMergeCudaWorkspaceBudget / plan.workspace_bytes_per_region, 1, b);
  auto workspace = at::empty({chunk * plan.workspace_bytes_per_region},
                             feats.options().dtype(at::kByte));
  auto thr_d = at::tensor(thr, at::TensorOptions().dtype(at::kDouble)).to(feats.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  err = unsam::cuda::merge_levels_launch(
      feats.data_ptr<float>(), valid.defined() ? valid.data_ptr<bool>() : nullptr,
      thr_d.data_ptr<double>(), levels, b, h, w, c, plan, workspace.data_ptr(), chunk,
      labels.data_ptr<int64_t>(), stream.stream());
  TORCH_CHECK(err == cudaSuccess, "merge_levels: CUDA kernel launch failed: ",
              cudaGetErrorString(err));
  return labels;
}

TORCH_LIBRARY_IMPL(unsam, CUDA, m) { m.impl("merge_levels", TORCH_FN(merge_levels_cuda)); }

}  // namespace unsam::ops
