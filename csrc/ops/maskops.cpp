// Schemas of the mask stage's ops (CPU backends in cpu/maskops_kernel.cpp; host ops:
// the Python wrappers in unsam/kernels/maskops.py give them CPU tensors).
#include "ops/maskops.h"

#include <torch/library.h>

namespace unsam::ops {

void check_mask_args(const at::Tensor& boxes, at::TensorList crops, int64_t height, int64_t width,
                     const char* op) {
  TORCH_CHECK(height >= 1 && width >= 1, op, ": height and width should be >= 1, got ", height, " x ", width);
  // Pixel counts, areas and intersections are kept in 32 bits (and COCO RLE counts are uint32).
  TORCH_CHECK_VALUE(height <= (int64_t{1} << 31) / width, op, ": height * width should be < 2^31, got ", height,
                    " x ", width);
  check_int32_count(boxes.dim() == 2 ? boxes.size(0) : 0, op, "K (masks)");
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op, ": boxes should have shape [K, 4], got ",
              shape_str(boxes));
  TORCH_CHECK(boxes.scalar_type() == at::kLong, op, ": boxes should be int64, got ", boxes.scalar_type());
  TORCH_CHECK(static_cast<int64_t>(crops.size()) == boxes.size(0), op, ": ", boxes.size(0),
              " boxes but ", crops.size(), " crops");
  auto b = boxes.contiguous();
  const int64_t* bp = b.data_ptr<int64_t>();
  for (int64_t k = 0; k < boxes.size(0); ++k) {
    const int64_t x0 = bp[4 * k], y0 = bp[4 * k + 1], x1 = bp[4 * k + 2], y1 = bp[4 * k + 3];
    TORCH_CHECK(0 <= x0 && x0 <= x1 && x1 <= width && 0 <= y0 && y0 <= y1 && y1 <= height, op, ": box ", k,
                " = (", x0, ", ", y0, ", ", x1, ", ", y1, ") is not inside the ", height, " x ", width, " image");
    const at::Tensor& c = crops[k];
    TORCH_CHECK(c.scalar_type() == at::kBool, op, ": crop ", k, " should be bool, got ", c.scalar_type());
    TORCH_CHECK(c.dim() == 2 && c.size(0) == y1 - y0 && c.size(1) == x1 - x0, op, ": crop ", k,
                " should have its box's shape [", y1 - y0, ", ", x1 - x0, "], got ", shape_str(c));
    TORCH_CHECK(c.is_contiguous(), op, ": crop ", k, " should be contiguous");
  }
}

void check_nms_args(const at::Tensor& values, const at::Tensor& scores, double iou) {
  check_finite(scores, "mask_nms", "scores");
  check_finite(iou, "mask_nms", "iou");
  TORCH_CHECK_VALUE(iou >= 0.0 && iou <= 1.0, "mask_nms: iou should be in [0, 1], got ", iou);
  TORCH_CHECK_VALUE(values.numel() == 0 || values.min().item<int64_t>() >= 0,
                    "mask_nms: values (intersections) should be >= 0");
}

void check_parents_args(const at::Tensor& inter, double contain) {
  TORCH_CHECK(inter.dim() == 2 && inter.size(0) == inter.size(1), "mask_parents: inter should be [K, K], got ",
              shape_str(inter));
  TORCH_CHECK(inter.scalar_type() == at::kLong, "mask_parents: inter should be int64, got ", inter.scalar_type());
  check_finite(contain, "mask_parents", "contain");
  TORCH_CHECK_VALUE(contain >= 0.0 && contain <= 1.0, "mask_parents: contain should be in [0, 1], got ", contain);
  TORCH_CHECK_VALUE(inter.numel() == 0 || inter.min().item<int64_t>() >= 0,
                    "mask_parents: inter (intersections) should be >= 0");
}

}  // namespace unsam::ops

TORCH_LIBRARY_FRAGMENT(unsam, m) {
  m.def("mask_overlaps(Tensor boxes, Tensor[] crops, int height, int width) -> (Tensor, Tensor, Tensor)");
  m.def("mask_nms(Tensor indptr, Tensor indices, Tensor values, Tensor scores, float iou, Tensor? protect) -> Tensor");
  m.def("mask_dense(Tensor indptr, Tensor indices, Tensor values, Tensor rows) -> Tensor");
  m.def("mask_parents(Tensor inter, float contain) -> Tensor");
  m.def(
      "mask_rle(Tensor boxes, Tensor[] crops, int work_h, int work_w, int height, int width) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}
