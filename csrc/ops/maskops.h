// The mask stage's compiled ops (unsam/masks.py): exact pairwise overlaps, mask NMS,
// containment parents and COCO RLE, on one image's masks. CPU backends in
// cpu/maskops_kernel.cpp; CUDA backends in cuda/maskops_cuda.cpp (overlaps, dense
// rows and parents on the device; NMS and RLE on the host), with the same outputs.
//
// Masks come as (box, crop) pairs: boxes [K, 4] int64 (x0, y0, x1, y1), x1/y1
// exclusive, on an image of height x width; crops: K bool tensors [y1 - y0, x1 - x0]
// (contiguous).
//
// mask_overlaps(boxes, crops, height, width) -> (indptr [K + 1] int64, indices int32, values int64)
//   |a ∩ b| for every overlapping pair b >= a (the upper triangle, diagonal included:
//   the areas), as a CSR matrix (columns sorted), computed on cells (pixels covered
//   by exactly the same masks, found by summing a random 64-bit key per mask over its
//   pixels): every mask is a union of cells, so |a ∩ b| = the summed area of the
//   cells both hold.
// mask_dense(indptr, indices, values, rows) -> [R, R] int64
//   The symmetric dense matrix of the given rows and columns of a CSR matrix stored
//   whole or as one triangle (each stored (i, j) fills (i, j) and (j, i)).
// mask_nms(indptr, indices, values, scores, iou, protected) -> kept [M] int64
//   On an intersection matrix stored whole or as one triangle (as mask_dense).
//   Greedy NMS: order = protected first, then score, area (larger first), index;
//   a mask is suppressed by an earlier kept one when |a ∩ b| / max(|a| + |b| -
//   |a ∩ b|, 1) > iou (float64), unless it is protected.
// mask_parents(inter, contain) -> parents [K] int64
//   The smallest strictly larger mask holding >= contain * |child| (float64),
//   lowest index among equal areas; -1 for none.
// mask_rle(boxes, crops, work_h, work_w, height, width)
//   -> (chars uint8 [T], char_offsets [K + 1] int64, area [K] int64, bbox [K, 4] float64)
//   COCO compressed RLE strings (column major, what pycocotools writes) of the masks
//   brought from the working resolution work_h x work_w to height x width by nearest
//   neighbour (full pixel X takes working pixel floor((X + 0.5) * work / full)), and
//   the area and bbox pycocotools computes from them. No full-size mask is formed.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "ops/common.h"

namespace unsam::ops {

std::tuple<at::Tensor, at::Tensor, at::Tensor> mask_overlaps_cpu(const at::Tensor& boxes, at::TensorList crops,
                                                                 int64_t height, int64_t width);

at::Tensor mask_nms_cpu(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
                        const at::Tensor& scores, double iou, const std::optional<at::Tensor>& protect);

at::Tensor mask_dense_cpu(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
                          const at::Tensor& rows);

at::Tensor mask_parents_cpu(const at::Tensor& inter, double contain);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mask_rle_cpu(const at::Tensor& boxes,
                                                                        at::TensorList crops, int64_t work_h,
                                                                        int64_t work_w, int64_t height,
                                                                        int64_t width);

// Checks shared by the ops: boxes [K, 4] int64 inside height x width, crops of the boxes' shapes.
void check_mask_args(const at::Tensor& boxes, at::TensorList crops, int64_t height, int64_t width,
                     const char* op);
// mask_nms: finite scores, iou in [0, 1], intersections >= 0.
void check_nms_args(const at::Tensor& values, const at::Tensor& scores, double iou);
// mask_parents: inter [K, K] int64 >= 0, contain in [0, 1].
void check_parents_args(const at::Tensor& inter, double contain);

}  // namespace unsam::ops
