// Host launchers of the CUDA kernels of unsam (defined in the .cu files).
//
// Plain pointers and CUDA runtime types only: the .cu files include no torch
// header, so nvcc never parses ATen; the torch glue (*_cuda.cpp, compiled by
// the host compiler) checks tensors and calls these. Every launcher returns
// the cudaGetLastError() of its launches (cudaSuccess when nothing was
// launched); the glue turns anything else into a TORCH_CHECK error.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace unsam::cuda {

// ---------------------------------------------------------------- affinity
// sim [graphs, rows, n] float32 contiguous (a tile of cosine rows). Row i of
// graph g is thresholded (> tau) and packed LSB first into
//   bits   + (g * n + i) * ceil(n / 32)   (ceil(n / 32) int32 words)
// and its popcount written to counts + g * n + i. Callers offset bits and
// counts to the tile's first graph and row; the graph stride is n rows.
cudaError_t affinity_pack_launch(const float* sim, int64_t graphs, int64_t rows, int64_t n,
                                 float tau, int32_t* bits, int32_t* counts,
                                 cudaStream_t stream);

// ---------------------------------------------------------------- lanczos
// out[g, i] = sum_j bit(g, i, j) * x[g, j] in float64, for bits [graphs, n,
// ceil(n / 32)] int32 and x, out [graphs, n] float64, all contiguous. Bits at
// columns >= n are ignored. active [graphs] (nullable): rows of graphs with
// active[g] == 0 are written as 0 (finished graphs of a batched solve).
cudaError_t lanczos_bitmatvec_launch(const int32_t* bits, const double* x,
                                     const uint8_t* active, int64_t graphs, int64_t n,
                                     double* out, cudaStream_t stream);

// ---------------------------------------------------------------- merge
// Resources of merge_levels for one region (an h x w grid, c channels).
struct MergeLevelsPlan {
  int64_t workspace_bytes_per_region = 0;  // global scratch per region in flight
  int64_t heap_capacity = 0;               // edge-heap entries per region
  int64_t shared_bytes = 0;                // dynamic shared memory per block
  bool heap_in_shared = false;             // heap in shared memory (else in the workspace)
};

// Fills *plan for regions of h x w patches with c channels on `device`.
cudaError_t merge_levels_plan(int64_t h, int64_t w, int64_t c, int device,
                              MergeLevelsPlan* plan);

// feats [regions, h, w, c] float32, valid [regions, h, w] (nullable),
// thresholds [levels] float64 in device memory, labels [regions, levels, h, w]
// int64, all contiguous. workspace holds workspace_regions *
// plan.workspace_bytes_per_region bytes (256-byte aligned); regions run in
// chunks of workspace_regions blocks on `stream`, reusing it.
cudaError_t merge_levels_launch(const float* feats, const bool* valid, const double* thresholds,
                                int64_t levels, int64_t regions, int64_t h, int64_t w, int64_t c,
                                const MergeLevelsPlan& plan, void* workspace,
                                int64_t workspace_regions, int64_t* labels, cudaStream_t stream);

// ---------------------------------------------------------------- mask ops
// boxes [K, 4] int64 (x0, y0, x1, y1) and crop_ptrs [K] (device addresses of the
// K bool crops, each [y1 - y0, x1 - x0] contiguous) and off [K + 1] int64 (the
// exclusive scan of (y1 - y0) * (ceil(x1 / 32) - floor(x0 / 32)), 0 for an empty
// box) all in device memory. Writes packed[off[K] = words] uint32: mask i's box
// rows as words floor(x0 / 32).. of full image rows, LSB first, 0 outside the box.
cudaError_t mask_pack_launch(const int64_t* boxes, const int64_t* crop_ptrs, const int64_t* off, int64_t k,
                             int64_t words, uint32_t* packed, cudaStream_t stream);

// The pairs j >= i whose boxes share a pixel. pair_ptr == nullptr: count[i] =
// their number per i. Else (pair_ptr = the exclusive scan of count, K + 1):
// pair_row / pair_col [pair_ptr[K]] int32 get them, i ascending, j ascending.
cudaError_t mask_pairs_launch(const int64_t* boxes, int64_t k, int64_t* count, const int64_t* pair_ptr,
                              int32_t* pair_row, int32_t* pair_col, cudaStream_t stream);

// values[p] = |mask pair_row[p] ∩ mask pair_col[p]| (int64) from the packed words.
cudaError_t mask_intersect_launch(const int64_t* boxes, const int64_t* off, const uint32_t* packed,
                                  const int32_t* pair_row, const int32_t* pair_col, int64_t pairs, int64_t* values,
                                  cudaStream_t stream);

}  // namespace unsam::cuda
