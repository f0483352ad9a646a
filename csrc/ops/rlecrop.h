// Training crops straight from COCO compressed RLE (unsam/train: the loader's masks).
// Host ops (DataLoader workers): CPU backends in cpu/rlecrop_kernel.cpp; CUDA tensors
// are refused with a message (rlecrop.cpp).
//
// K masks of one height x width image come as their COMPRESSED RLE strings (what
// pycocotools writes: column-major runs, counts after the first three as deltas, 5-bit
// groups offset by 48), concatenated: chars uint8 [T], offsets int64 [K + 1] (mask k is
// chars[offsets[k] : offsets[k + 1]]).
//
// The crop is a nearest-neighbour resampling given by its source rows and columns:
// rows int64 [R] (output row i takes source row rows[i]), cols int64 [C]; -1 is an
// output row / column outside the image (zero padding). Any map is allowed (scaling
// up or down, flips, padding), so output pixel (i, j) of mask k is
//   full_k[rows[i], cols[j]]   (false where rows[i] or cols[j] is -1),
// what decoding the whole mask and indexing it as full[rows][:, cols] gives; no
// full-size mask is formed: the runs are clipped to the sampled columns and read
// through the rows' map.
//
// rle_crop_area(chars, offsets, height, width, rows, cols) -> area int64 [K]
//   the number of set pixels of each mask's crop, from the runs alone (nothing decoded).
// rle_crop(chars, offsets, height, width, rows, cols) -> (masks bool [K, R, C], boxes int64 [K, 4])
//   the crops, and each one's tight box (x0, y0, x1, y1), x1/y1 exclusive; zeros when empty.
// rle_crop_at(chars, offsets, height, width, rows, cols, points) -> bool [K, P]
//   the crops' values at output pixels points int64 [P, 2] (row i, column j): masks[k, i, j]
//   without decoding the masks.
//
// Malformed strings (a character outside '0'..'o', a count of more than 12 groups, a
// negative count, counts not covering exactly height * width pixels) raise an error
// naming the op and the mask.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "ops/common.h"

namespace unsam::ops {

at::Tensor rle_crop_area_cpu(const at::Tensor& chars, const at::Tensor& offsets, int64_t height, int64_t width,
                             const at::Tensor& rows, const at::Tensor& cols);

std::tuple<at::Tensor, at::Tensor> rle_crop_cpu(const at::Tensor& chars, const at::Tensor& offsets, int64_t height,
                                                int64_t width, const at::Tensor& rows, const at::Tensor& cols);

at::Tensor rle_crop_at_cpu(const at::Tensor& chars, const at::Tensor& offsets, int64_t height, int64_t width,
                           const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& points);

// Checks shared by the three ops (device, dtypes, shapes, offsets, the maps' values).
void check_rle_crop_args(const at::Tensor& chars, const at::Tensor& offsets, int64_t height, int64_t width,
                         const at::Tensor& rows, const at::Tensor& cols, const char* op);

}  // namespace unsam::ops
