// Shared argument checks for the unsam ops. Every message names the argument,
// what was expected and what came (torchvision style).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
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

// Values an op cannot work with are an error that names the op and the argument
// (ValueError in Python), never undefined behaviour: NaN breaks every comparison
// (std::sort's strict weak order among them), infinity every sum.
inline void check_finite(const at::Tensor& t, const char* op, const char* name) {
  if (t.numel() == 0 || !t.is_floating_point()) return;
  const int64_t bad = (t.isnan().logical_or(t.isinf())).sum().item<int64_t>();
  TORCH_CHECK_VALUE(bad == 0, op, ": ", name, " contains ", bad,
                    " NaN or infinite value(s); clean the input first");
}

inline void check_finite(double v, const char* op, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(v), op, ": ", name, " should be a finite number, got ", v);
}

// Counts a kernel keeps in 32-bit integers (pixels of an image, masks of a set).
inline void check_int32_count(int64_t n, const char* op, const char* what) {
  TORCH_CHECK_VALUE(n >= 0 && n < (int64_t{1} << 31), op, ": ", what, " should be < 2^31, got ", n);
}

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
