// Schema of unsam::affinity. Backends register in cpu/ and cuda/; the
// dispatcher picks one from the device of `feats`.
#include "ops/affinity.h"

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(unsam, m) {
  m.def("affinity(Tensor feats, Tensor? valid, float tau, float eps) -> (Tensor, Tensor)");
}
