// CPU-only builds: a CUDA tensor would otherwise meet the dispatcher's generic
// "Could not run ... with arguments from the 'CUDA' backend". Register CUDA
// entries that say how to get a CUDA build instead.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "ops/common.h"

namespace unsam::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> affinity_nocuda(const at::Tensor&,
                                                   const std::optional<at::Tensor>&, double,
                                                   double) {
  TORCH_CHECK(false, "affinity: got a CUDA tensor, but ", rebuild_hint());
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> lanczos_nocuda(const at::Tensor&,
                                                              const at::Tensor&,
                                                              const std::optional<at::Tensor>&,
                                                              double, double, int64_t) {
  TORCH_CHECK(false, "lanczos_fiedler: got a CUDA tensor, but ", rebuild_hint());
}
at::Tensor merge_nocuda(const at::Tensor&, const std::optional<at::Tensor>&,
                        at::ArrayRef<double>) {
  TORCH_CHECK(false, "merge_levels: got a CUDA tensor, but ", rebuild_hint());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mask_overlaps_nocuda(const at::Tensor&, at::TensorList, int64_t,
                                                                    int64_t) {
  TORCH_CHECK(false, "mask_overlaps: got a CUDA tensor, but ", rebuild_hint());
}
at::Tensor mask_dense_nocuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false, "mask_dense: got a CUDA tensor, but ", rebuild_hint());
}
at::Tensor mask_parents_nocuda(const at::Tensor&, double) {
  TORCH_CHECK(false, "mask_parents: got a CUDA tensor, but ", rebuild_hint());
}
at::Tensor mask_nms_nocuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                           const std::optional<at::Tensor>&) {
  TORCH_CHECK(false, "mask_nms: got a CUDA tensor, but ", rebuild_hint());
}
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mask_rle_nocuda(const at::Tensor&, at::TensorList, int64_t,
                                                                           int64_t, int64_t, int64_t) {
  TORCH_CHECK(false, "mask_rle: got a CUDA tensor, but ", rebuild_hint());
}

}  // namespace

TORCH_LIBRARY_IMPL(unsam, CUDA, m) {
  m.impl("mask_overlaps", TORCH_FN(mask_overlaps_nocuda));
  m.impl("mask_dense", TORCH_FN(mask_dense_nocuda));
  m.impl("mask_parents", TORCH_FN(mask_parents_nocuda));
  m.impl("mask_nms", TORCH_FN(mask_nms_nocuda));
  m.impl("mask_rle", TORCH_FN(mask_rle_nocuda));
  m.impl("affinity", TORCH_FN(affinity_nocuda));
  m.impl("lanczos_fiedler", TORCH_FN(lanczos_nocuda));
  m.impl("merge_levels", TORCH_FN(merge_nocuda));
}

}  // namespace unsam::ops
