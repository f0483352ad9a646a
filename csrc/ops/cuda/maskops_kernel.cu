// CUDA kernels of unsam::mask_overlaps: masks bit-packed at the working
// resolution, pairwise intersections by popcount over the pairs whose boxes
// overlap (maskops_cuda.cpp compacts the nonzero ones into the same CSR upper
// triangle the CPU op writes).
//
// Packing: mask i keeps the rows y0..y1-1 of its box, each as the words
// x0 / 32 .. ceil(x1 / 32) - 1 of a full image row (bit x % 32 of word x / 32,
// LSB first), zero outside the box. Two masks' words for the same image row and
// word index line up, so |a ∩ b| is a sum of popcounts of ANDs over the rows
// and words both boxes cover. Exact integers: the values equal the CPU op's.
#include <cuda_runtime.h>

#include <cstdint>

#include "ops/cuda/launchers.h"

namespace unsam::cuda {

namespace {

constexpr int kMaskThreads = 256;

__device__ inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
__device__ inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ inline int64_t word_lo(int64_t x0) { return x0 >> 5; }
__device__ inline int64_t word_hi(int64_t x0, int64_t x1) { return x1 > x0 ? (x1 + 31) >> 5 : x0 >> 5; }

// The mask holding packed word t: the last i with off[i] <= t (off nondecreasing).
__device__ inline int64_t mask_of_word(const int64_t* off, int64_t k, int64_t t) {
  int64_t lo = 0, hi = k;  // off[lo] <= t < off[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) >> 1;
    if (off[mid] <= t)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

__global__ void __launch_bounds__(kMaskThreads)
    mask_pack_kernel(const int64_t* __restrict__ boxes, const int64_t* __restrict__ crop_ptrs,
                     const int64_t* __restrict__ off, int64_t k, uint32_t* __restrict__ packed) {
  const int64_t total = off[k];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += stride) {
    const int64_t i = mask_of_word(off, k, t);
    const int64_t x0 = boxes[4 * i], x1 = boxes[4 * i + 2];
    const int64_t wl = word_lo(x0), nw = word_hi(x0, x1) - wl;
    const int64_t local = t - off[i];
    const int64_t row = local / nw, wx = wl + local % nw;
    const uint8_t* crop = reinterpret_cast<const uint8_t*>(crop_ptrs[i]) + row * (x1 - x0);
    uint32_t word = 0;
    const int64_t xa = wx * 32;
    for (int b = 0; b < 32; ++b) {
      const int64_t x = xa + b;
      if (x >= x0 && x < x1 && crop[x - x0]) word |= 1u << b;
    }
    packed[t] = word;
  }
}

__device__ inline bool boxes_meet(const int64_t* a, const int64_t* b) {
  return a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
}

// count[i] = #{j >= i : boxes i and j share a pixel}; with pair_ptr (its
// exclusive scan) given, the same j written in increasing order instead.
__global__ void __launch_bounds__(kMaskThreads)
    mask_pairs_kernel(const int64_t* __restrict__ boxes, int64_t k, int64_t* __restrict__ count,
                      const int64_t* __restrict__ pair_ptr, int32_t* __restrict__ pair_row,
                      int32_t* __restrict__ pair_col) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < k; i += stride) {
    const int64_t* a = boxes + 4 * i;
    int64_t n = 0;
    for (int64_t j = i; j < k; ++j) {
      if (!boxes_meet(a, boxes + 4 * j)) continue;
      if (pair_ptr != nullptr) {
        pair_row[pair_ptr[i] + n] = static_cast<int32_t>(i);
        pair_col[pair_ptr[i] + n] = static_cast<int32_t>(j);
      }
      ++n;
    }
    if (pair_ptr == nullptr) count[i] = n;
  }
}

// One warp per pair: the popcount of the AND of the two masks' words over the
// rows and words both boxes cover.
__global__ void __launch_bounds__(kMaskThreads)
    mask_intersect_kernel(const int64_t* __restrict__ boxes, const int64_t* __restrict__ off,
                          const uint32_t* __restrict__ packed, const int32_t* __restrict__ pair_row,
                          const int32_t* __restrict__ pair_col, int64_t pairs, int64_t* __restrict__ values) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kMaskThreads / 32);
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * (kMaskThreads / 32) + (threadIdx.x >> 5); p < pairs;
       p += warps) {
    const int64_t i = pair_row[p], j = pair_col[p];
    const int64_t* a = boxes + 4 * i;
    const int64_t* b = boxes + 4 * j;
    const int64_t wla = word_lo(a[0]), nwa = word_hi(a[0], a[2]) - wla;
    const int64_t wlb = word_lo(b[0]), nwb = word_hi(b[0], b[2]) - wlb;
    const int64_t ya = imax(a[1], b[1]), yb = imin(a[3], b[3]);
    const int64_t wa = imax(wla, wlb), wb = imin(wla + nwa, wlb + nwb);
    const int64_t cols = wb - wa;
    const int64_t n = (yb - ya) * cols;
    unsigned long long acc = 0;
    for (int64_t t = lane; t < n; t += 32) {
      const int64_t y = ya + t / cols, w = wa + t % cols;
      const uint32_t u = packed[off[i] + (y - a[1]) * nwa + (w - wla)];
      const uint32_t v = packed[off[j] + (y - b[1]) * nwb + (w - wlb)];
      acc += __popc(u & v);
    }
    for (int s = 16; s > 0; s >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, s);
    if (lane == 0) values[p] = static_cast<int64_t>(acc);
  }
}

int blocks_for(int64_t work, int per_block) {
  const int64_t b = (work + per_block - 1) / per_block;
  return static_cast<int>(b < 1 ? 1 : (b > 65535 * 16 ? 65535 * 16 : b));
}

}  // namespace

cudaError_t mask_pack_launch(const int64_t* boxes, const int64_t* crop_ptrs, const int64_t* off, int64_t k,
                             int64_t words, uint32_t* packed, cudaStream_t stream) {
  if (k == 0 || words == 0) return cudaSuccess;
  mask_pack_kernel<<<blocks_for(words, kMaskThreads), kMaskThreads, 0, stream>>>(boxes, crop_ptrs, off, k, packed);
  return cudaGetLastError();
}

cudaError_t mask_pairs_launch(const int64_t* boxes, int64_t k, int64_t* count, const int64_t* pair_ptr,
                              int32_t* pair_row, int32_t* pair_col, cudaStream_t stream) {
  if (k == 0) return cudaSuccess;
  mask_pairs_kernel<<<blocks_for(k, kMaskThreads), kMaskThreads, 0, stream>>>(boxes, k, count, pair_ptr, pair_row,
                                                                               pair_col);
  return cudaGetLastError();
}

cudaError_t mask_intersect_launch(const int64_t* boxes, const int64_t* off, const uint32_t* packed,
                                  const int32_t* pair_row, const int32_t* pair_col, int64_t pairs, int64_t* values,
                                  cudaStream_t stream) {
  if (pairs == 0) return cudaSuccess;
  mask_intersect_kernel<<<blocks_for(pairs, kMaskThreads / 32), kMaskThreads, 0, stream>>>(
      boxes, off, packed, pair_row, pair_col, pairs, values);
  return cudaGetLastError();
}

}  // namespace unsam::cuda
