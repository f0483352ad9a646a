// Schema of unsam::lanczos_fiedler (backends in cpu/ and cuda/).
#include "ops/lanczos.h"

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(unsam, m) {
  m.def(
      "lanczos_fiedler(Tensor bits, Tensor deg, Tensor? x0, float eps, float tol, int max_iter)"
      " -> (Tensor, Tensor, Tensor)");
}
