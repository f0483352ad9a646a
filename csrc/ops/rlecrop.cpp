// Schemas and argument checks of the RLE crop ops (ops/rlecrop.h; CPU backends in
// cpu/rlecrop_kernel.cpp). As the other ops: a wrong device, shape or dtype is a
// RuntimeError, a value the op cannot work with (indices out of range, counts past
// int64, malformed RLE) a ValueError; both name the op and the argument.
#include "ops/rlecrop.h"

#include <torch/library.h>

#include <limits>

namespace unsam::ops {

namespace {

void check_rle_map(const at::Tensor& map, int64_t size, const char* name, const char* op) {
  TORCH_CHECK(map.device().is_cpu(), op, ": ", name, " should be a CPU tensor, got one on ", map.device());
  TORCH_CHECK(map.dim() == 1, op, ": ", name, " should be a 1-D tensor, got shape ", shape_str(map));
  TORCH_CHECK(map.scalar_type() == at::kLong, op, ": ", name, " should be int64, got ", map.scalar_type());
  if (map.numel() == 0) return;
  const auto lo = map.min().item<int64_t>(), hi = map.max().item<int64_t>();
  TORCH_CHECK_VALUE(lo >= -1 && hi < size, op, ": ", name, " should hold source indices in [-1, ", size,
              ") (-1: outside the image), got values in [", lo, ", ", hi, "]");
}

}  // namespace

void check_rle_crop_args(const at::Tensor& chars, const at::Tensor& offsets, int64_t height, int64_t width,
                         const at::Tensor& rows, const at::Tensor& cols, const char* op) {
  TORCH_CHECK(height >= 1 && width >= 1, op, ": height and width should be >= 1, got ", height, " x ", width);
  // Run positions are flat pixel indices of the source image: they must fit int64.
  TORCH_CHECK_VALUE(height <= std::numeric_limits<int64_t>::max() / width, op, ": the image ", height, " x ", width,
              " has more pixels than int64 can count");
  TORCH_CHECK(chars.device().is_cpu() && offsets.device().is_cpu(), op,
              ": chars and offsets should be CPU tensors (a host op), got ", chars.device(), " and ",
              offsets.device());
  TORCH_CHECK(chars.dim() == 1, op, ": chars should be a 1-D tensor, got shape ", shape_str(chars));
  TORCH_CHECK(chars.scalar_type() == at::kByte, op, ": chars should be uint8, got ", chars.scalar_type());
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 1, op, ": offsets should have shape [K + 1], got ",
              shape_str(offsets));
  TORCH_CHECK(offsets.scalar_type() == at::kLong, op, ": offsets should be int64, got ", offsets.scalar_type());
  const auto off = offsets.contiguous();
  const int64_t* o = off.data_ptr<int64_t>();
  const int64_t k = offsets.size(0) - 1;
  TORCH_CHECK_VALUE(o[0] == 0 && o[k] == chars.size(0), op, ": offsets should run from 0 to the length of chars (",
              chars.size(0), "), got ", o[0], " ... ", o[k]);
  for (int64_t i = 0; i < k; ++i)
    TORCH_CHECK_VALUE(o[i] <= o[i + 1], op, ": offsets should be nondecreasing, got offsets[", i, "] = ", o[i],
                " > offsets[", i + 1, "] = ", o[i + 1]);
  check_rle_map(rows, height, "rows", op);
  check_rle_map(cols, width, "cols", op);
  // Areas are counted in crop pixels.
  TORCH_CHECK_VALUE(cols.numel() == 0 || rows.numel() <= std::numeric_limits<int64_t>::max() / cols.numel(), op,
              ": a crop of ", rows.numel(), " x ", cols.numel(), " pixels has more pixels than int64 can count");
}

namespace {

// Host ops: a CUDA tensor gets this message in every build, rather than the
// dispatcher's generic "could not run ... with arguments from the 'CUDA' backend".
constexpr const char* kRleHostOp =
    ": got a CUDA tensor, but the RLE crop ops are host ops (they run in the DataLoader's workers): give them "
    "CPU tensors";
at::Tensor rle_crop_area_cuda(const at::Tensor&, const at::Tensor&, int64_t, int64_t, const at::Tensor&,
                              const at::Tensor&) {
  TORCH_CHECK(false, "rle_crop_area", kRleHostOp);
}
std::tuple<at::Tensor, at::Tensor> rle_crop_cuda(const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                                 const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false, "rle_crop", kRleHostOp);
}
at::Tensor rle_crop_at_cuda(const at::Tensor&, const at::Tensor&, int64_t, int64_t, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false, "rle_crop_at", kRleHostOp);
}

}  // namespace

}  // namespace unsam::ops

TORCH_LIBRARY_FRAGMENT(unsam, m) {
  m.def("rle_crop_area(Tensor chars, Tensor offsets, int height, int width, Tensor rows, Tensor cols) -> Tensor");
  m.def(
      "rle_crop(Tensor chars, Tensor offsets, int height, int width, Tensor rows, Tensor cols) "
      "-> (Tensor, Tensor)");
  m.def(
      "rle_crop_at(Tensor chars, Tensor offsets, int height, int width, Tensor rows, Tensor cols, "
      "Tensor points) -> Tensor");
}

TORCH_LIBRARY_IMPL(unsam, CUDA, m) {
  m.impl("rle_crop_area", TORCH_FN(unsam::ops::rle_crop_area_cuda));
  m.impl("rle_crop", TORCH_FN(unsam::ops::rle_crop_cuda));
  m.impl("rle_crop_at", TORCH_FN(unsam::ops::rle_crop_at_cuda));
}
