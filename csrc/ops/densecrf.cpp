// Schema of unsam::dense_crf and its argument checks (CPU backend in
// cpu/densecrf_kernel.cpp). A host op for now: no CUDA kernel has been written
// (none could be run where it was written), so the CUDA entry, registered in every
// build, says what to do instead of the dispatcher's generic message.
#include "ops/densecrf.h"

#include <torch/library.h>

#include <cmath>

namespace unsam::ops {

void check_dense_crf_args(const at::Tensor& image, const at::Tensor& masks, double gaussian_sxy,
                          double gaussian_compat, double bilateral_sxy, double bilateral_srgb,
                          double bilateral_compat, int64_t iterations) {
  UNSAM_CHECK_DIM(image, 3, "dense_crf: image");
  TORCH_CHECK(image.size(2) == 3, "dense_crf: image should have shape [H, W, 3] (RGB), got ", shape_str(image));
  UNSAM_CHECK_DTYPE(image, at::kByte, "dense_crf: image");
  UNSAM_CHECK_DIM(masks, 3, "dense_crf: masks");
  TORCH_CHECK(masks.scalar_type() == at::kBool || masks.scalar_type() == at::kFloat,
              "dense_crf: masks should be bool or float32, got ", masks.scalar_type());
  TORCH_CHECK(masks.size(1) == image.size(0) && masks.size(2) == image.size(1),
              "dense_crf: masks should have shape [K, ", image.size(0), ", ", image.size(1),
              "] (the image's H and W), got ", shape_str(masks));
  UNSAM_CHECK_SAME_DEVICE(image, masks, "dense_crf: image", "masks");
  auto positive = [](double v, const char* name) {
    TORCH_CHECK(std::isfinite(v) && v > 0.0, "dense_crf: ", name, " should be finite and > 0, got ", v);
  };
  positive(gaussian_sxy, "gaussian_sxy");
  positive(bilateral_sxy, "bilateral_sxy");
  positive(bilateral_srgb, "bilateral_srgb");
  TORCH_CHECK(std::isfinite(gaussian_compat), "dense_crf: gaussian_compat should be finite, got ", gaussian_compat);
  TORCH_CHECK(std::isfinite(bilateral_compat), "dense_crf: bilateral_compat should be finite, got ",
              bilateral_compat);
  TORCH_CHECK(iterations >= 0, "dense_crf: iterations should be >= 0, got ", iterations);
}

namespace {

at::Tensor dense_crf_host_only(const at::Tensor&, const at::Tensor&, double, double, double, double, double,
                               int64_t, bool) {
  TORCH_CHECK(false,
              "dense_crf: got a CUDA tensor, but dense_crf is a host op for now (no CUDA kernel yet); "
              "unsam.kernels.dense_crf moves its inputs to the CPU, or pass CPU tensors");
}

}  // namespace
}  // namespace unsam::ops

TORCH_LIBRARY_FRAGMENT(unsam, m) {
  m.def(
      "dense_crf(Tensor image, Tensor masks, float gaussian_sxy, float gaussian_compat, float bilateral_sxy, "
      "float bilateral_srgb, float bilateral_compat, int iterations, bool logits) -> Tensor");
}

TORCH_LIBRARY_IMPL(unsam, CUDA, m) { m.impl("dense_crf", TORCH_FN(unsam::ops::dense_crf_host_only)); }
