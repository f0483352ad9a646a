// CUDA backends of the mask ops (ops/maskops.h), same outputs as the CPU ops:
//   mask_overlaps: masks bit-packed on the device, every pair whose boxes meet
//     intersected by popcount (maskops_kernel.cu), the nonzero ones compacted
//     into the CPU op's CSR upper triangle (exact integers: equal arrays);
//   mask_dense, mask_parents: ATen ops on the device (the same float64 tests);
//   mask_nms, mask_rle: on the host (greedy NMS is sequential; the RLE strings
//     are assembled on the host), results moved back to the device.
//
// Compiled in a unity batch with the CPU kernels: namespace-scope names carry
// the op's name.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "ops/cuda/launchers.h"
#include "ops/maskops.h"

namespace unsam::ops {
namespace {

void maskcuda_check_device(const at::Tensor& boxes, at::TensorList crops, const char* op) {
  TORCH_CHECK(boxes.is_cuda(), op, ": boxes should be on the CUDA device of the crops, got ", boxes.device());
  for (size_t i = 0; i < crops.size(); ++i) {
    TORCH_CHECK(crops[i].device() == boxes.device(), op, ": crop ", i, " is on ", crops[i].device(),
                ", the boxes on ", boxes.device());
  }
}

void maskcuda_check(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

// The CSR arrays' dtypes and shapes (values are checked where they are read).
void maskcuda_check_csr(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
                        const char* op) {
  TORCH_CHECK(indptr.dim() == 1 && indptr.size(0) >= 1 && indptr.scalar_type() == at::kLong, op,
              ": indptr should be int64 [K + 1], got ", indptr.scalar_type(), " ", shape_str(indptr));
  TORCH_CHECK(indices.scalar_type() == at::kInt && values.scalar_type() == at::kLong && indices.dim() == 1 &&
                  values.dim() == 1 && indices.size(0) == values.size(0),
              op, ": indices (int32) and values (int64) should be 1-D of one length");
  TORCH_CHECK(indices.device() == indptr.device() && values.device() == indptr.device(), op,
              ": indptr, indices and values should be on one device");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> mask_overlaps_cuda(const at::Tensor& boxes_in, at::TensorList crops,
                                                                  int64_t height, int64_t width) {
  maskcuda_check_device(boxes_in, crops, "mask_overlaps");
  const at::Tensor boxes_h = boxes_in.to(at::kCPU).contiguous();
  check_mask_args(boxes_h, crops, height, width, "mask_overlaps");
  c10::cuda::CUDAGuard device_guard(boxes_in.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto opts = boxes_in.options().dtype(at::kLong);
  const int64_t k = boxes_h.size(0);
  if (k == 0) return {at::zeros({1}, opts), at::empty({0}, opts.dtype(at::kInt)), at::empty({0}, opts)};
  // Where each mask's packed words go, and its crop's device address.
  const int64_t* b = boxes_h.data_ptr<int64_t>();
  std::vector<int64_t> off(k + 1, 0), ptrs(k, 0);
  for (int64_t i = 0; i < k; ++i) {
    const int64_t x0 = b[4 * i], y0 = b[4 * i + 1], x1 = b[4 * i + 2], y1 = b[4 * i + 3];
    const int64_t words_per_row = x1 > x0 ? (x1 + 31) / 32 - x0 / 32 : 0;
    off[i + 1] = off[i] + (y1 - y0) * words_per_row;
    if (crops[i].numel() > 0) ptrs[i] = reinterpret_cast<int64_t>(crops[i].data_ptr<bool>());
  }
  const at::Tensor boxes = boxes_h.to(boxes_in.device());
  const at::Tensor off_d = at::tensor(off, at::TensorOptions().dtype(at::kLong)).to(boxes_in.device());
  const at::Tensor ptr_d = at::tensor(ptrs, at::TensorOptions().dtype(at::kLong)).to(boxes_in.device());
  const int64_t words = off[k];
  auto packed = at::empty({std::max<int64_t>(words, 1)}, opts.dtype(at::kInt));
  maskcuda_check(unsam::cuda::mask_pack_launch(boxes.data_ptr<int64_t>(), ptr_d.data_ptr<int64_t>(),
                                               off_d.data_ptr<int64_t>(), k, words,
                                               reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>()),
                                               stream.stream()),
                 "mask_overlaps");
  // Every pair j >= i whose boxes meet, i then j ascending.
  auto count = at::empty({k}, opts);
  maskcuda_check(unsam::cuda::mask_pairs_launch(boxes.data_ptr<int64_t>(), k, count.data_ptr<int64_t>(), nullptr,
                                                nullptr, nullptr, stream.stream()),
                 "mask_overlaps");
  auto pair_ptr = at::zeros({k + 1}, opts);
  pair_ptr.slice(0, 1).copy_(count.cumsum(0));
  const int64_t pairs = pair_ptr[k].item<int64_t>();
  auto pair_row = at::empty({std::max<int64_t>(pairs, 1)}, opts.dtype(at::kInt));
  auto pair_col = at::empty({std::max<int64_t>(pairs, 1)}, opts.dtype(at::kInt));
  auto inter = at::empty({std::max<int64_t>(pairs, 1)}, opts);
  maskcuda_check(unsam::cuda::mask_pairs_launch(boxes.data_ptr<int64_t>(), k, count.data_ptr<int64_t>(),
                                                pair_ptr.data_ptr<int64_t>(), pair_row.data_ptr<int32_t>(),
                                                pair_col.data_ptr<int32_t>(), stream.stream()),
                 "mask_overlaps");
  maskcuda_check(unsam::cuda::mask_intersect_launch(boxes.data_ptr<int64_t>(), off_d.data_ptr<int64_t>(),
                                                    reinterpret_cast<const uint32_t*>(packed.data_ptr<int32_t>()),
                                                    pair_row.data_ptr<int32_t>(), pair_col.data_ptr<int32_t>(), pairs,
                                                    inter.data_ptr<int64_t>(), stream.stream()),
                 "mask_overlaps");
  // Only the pairs that share a pixel, as the CPU op stores them (order kept).
  const auto keep = inter.slice(0, 0, pairs).gt(0);
  const auto rows = pair_row.slice(0, 0, pairs).masked_select(keep).to(at::kLong);
  auto indices = pair_col.slice(0, 0, pairs).masked_select(keep);
  auto values = inter.slice(0, 0, pairs).masked_select(keep);
  auto indptr = at::zeros({k + 1}, opts);
  indptr.slice(0, 1).copy_(at::bincount(rows, {}, k).cumsum(0));
  return {indptr, indices, values};
}

at::Tensor mask_dense_cuda(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
                           const at::Tensor& rows) {
  maskcuda_check_csr(indptr, indices, values, "mask_dense");
  TORCH_CHECK(rows.dim() == 1 && rows.scalar_type() == at::kLong, "mask_dense: rows should be int64 [R], got ",
              rows.scalar_type(), " ", shape_str(rows));
  TORCH_CHECK(rows.device() == indptr.device(), "mask_dense: rows should be on the matrix's device");
  c10::cuda::CUDAGuard device_guard(indptr.device());
  const auto opts = indptr.options();
  const int64_t k = indptr.size(0) - 1, n = rows.size(0);
  if (n > 0) {
    const int64_t lo = rows.min().item<int64_t>(), hi = rows.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < k, "mask_dense: row ", lo < 0 ? lo : hi, " is outside [0, ", k, ")");
    TORCH_CHECK(std::get<0>(at::_unique(rows)).size(0) == n, "mask_dense: a row is asked twice");
  }
  const auto cols = indices.to(at::kLong);
  if (cols.numel() > 0) {
    const int64_t lo = cols.min().item<int64_t>(), hi = cols.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < k, "mask_dense: column ", lo < 0 ? lo : hi, " is outside [0, ", k, ")");
  }
  auto at_row = at::full({k}, -1, opts);
  at_row.index_put_({rows}, at::arange(n, opts));
  const auto row_of = at::repeat_interleave(indptr.diff());
  auto a = at_row.index_select(0, row_of);
  auto c = at_row.index_select(0, cols);
  const auto sel = a.ge(0).logical_and(c.ge(0));
  a = a.masked_select(sel);
  c = c.masked_select(sel);
  const auto v = values.masked_select(sel);
  auto out = at::zeros({n, n}, opts);
  out.index_put_({a, c}, v);  // either triangle, or both: the same values
  out.index_put_({c, a}, v);
  return out;
}

at::Tensor mask_parents_cuda(const at::Tensor& inter_in, double contain) {
  check_parents_args(inter_in, contain);
  c10::cuda::CUDAGuard device_guard(inter_in.device());
  const int64_t k = inter_in.size(0);
  const auto opts = inter_in.options();
  if (k == 0) return at::empty({0}, opts);
  const auto diag = inter_in.diagonal();
  const auto area = diag.to(at::kDouble);
  // The CPU op's tests in the same float64 arithmetic: a strictly larger mask
  // holding >= contain * |child|; the smallest, lowest index among equal areas.
  const auto ok = area.unsqueeze(0).gt(area.unsqueeze(1)).logical_and(
      inter_in.to(at::kDouble).ge((area * contain).unsqueeze(1)));
  const auto key = at::where(ok, diag.unsqueeze(0) * (k + 1) + at::arange(k, opts).unsqueeze(0),
                             std::numeric_limits<int64_t>::max());
  return at::where(ok.any(1), key.argmin(1), -1);
}

at::Tensor mask_nms_cuda(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
                         const at::Tensor& scores, double iou, const std::optional<at::Tensor>& protect) {
  std::optional<at::Tensor> protect_h;
  if (protect.has_value()) protect_h = protect->to(at::kCPU);
  return mask_nms_cpu(indptr.to(at::kCPU), indices.to(at::kCPU), values.to(at::kCPU), scores.to(at::kCPU), iou,
                      protect_h)
      .to(indptr.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mask_rle_cuda(const at::Tensor& boxes, at::TensorList crops,
                                                                         int64_t work_h, int64_t work_w,
                                                                         int64_t height, int64_t width) {
  maskcuda_check_device(boxes, crops, "mask_rle");
  std::vector<at::Tensor> host;
  host.reserve(crops.size());
  for (const auto& c : crops) host.push_back(c.to(at::kCPU));
  auto [chars, offsets, area, bbox] = mask_rle_cpu(boxes.to(at::kCPU), host, work_h, work_w, height, width);
  const auto dev = boxes.device();
  return {chars.to(dev), offsets.to(dev), area.to(dev), bbox.to(dev)};
}

TORCH_LIBRARY_IMPL(unsam, CUDA, m) {
  m.impl("mask_overlaps", TORCH_FN(mask_overlaps_cuda));
  m.impl("mask_dense", TORCH_FN(mask_dense_cuda));
  m.impl("mask_parents", TORCH_FN(mask_parents_cuda));
  m.impl("mask_nms", TORCH_FN(mask_nms_cuda));
  m.impl("mask_rle", TORCH_FN(mask_rle_cuda));
}

}  // namespace unsam::ops
