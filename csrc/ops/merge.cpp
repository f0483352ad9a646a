// Schema of unsam::merge_levels (backends in cpu/ and cuda/).
#include "ops/merge.h"

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(unsam, m) {
  m.def("merge_levels(Tensor feats, Tensor? valid, float[] thresholds) -> Tensor");
}
