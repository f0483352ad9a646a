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

}  // namespace

TORCH_LIBRARY_IMPL(unsam, CUDA, m) {
  m.impl("affinity", TORCH_FN(affinity_nocuda));
  m.impl("lanczos_fiedler", TORCH_FN(lanczos_nocuda));
  m.impl("merge_levels", TORCH_FN(merge_nocuda));
}

}  // namespace unsam::ops
