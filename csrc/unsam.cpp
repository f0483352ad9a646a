// The Python module unsam._C. Importing it runs the op registrations
// (TORCH_LIBRARY_* in csrc/ops); the module itself only reports how it was built.
#include <pybind11/pybind11.h>

#ifndef UNSAM_TORCH_VERSION
#define UNSAM_TORCH_VERSION "unknown"
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "unsam compiled kernels (ops live in torch.ops.unsam)";
#ifdef UNSAM_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("torch_version") = UNSAM_TORCH_VERSION;
}
