// Shared argument checks for the unsam ops. Every message names the argument,
// what was expected and what came (torchvision style).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace unsam::ops {

inline std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(t.size(i));
  }
  return s + "]";
}

#define UNSAM_CHECK_DIM(t, d, name)                                                  \
  TORCH_CHECK((t).dim() == (d), name " should be a " #d "-D tensor, got ",          \
              (t).dim(), "-D tensor of shape ", ::unsam::ops::shape_str(t))

#define UNSAM_CHECK_DTYPE(t, dt, name)                                               \
  TORCH_CHECK((t).scalar_type() == (dt), name " should have dtype ", (dt), ", got ", \
              (t).scalar_type())

#define UNSAM_CHECK_SAME_DEVICE(a, b, name_a, name_b)                                \
  TORCH_CHECK((a).device() == (b).device(), name_a " and " name_b                    \
              " should be on the same device, got ", (a).device(), " and ", (b).device())

// Words of 32 bits per row of a bit-packed N x N graph.
inline int64_t packed_words(int64_t n) { return (n + 31) / 32; }

// The message a CPU-only build gives for a CUDA tensor.
inline const char* rebuild_hint() {
  return "unsam was built without CUDA kernels. Rebuild with a CUDA toolkit (nvcc) "
         "installed and a CUDA build of torch: `UNSAM_CUDA=ON pip install "
         "--no-build-isolation -e .` (see README, 'Building'); "
         "unsam.kernels.has_cuda() tells which build is installed";
}

}  // namespace unsam::ops
