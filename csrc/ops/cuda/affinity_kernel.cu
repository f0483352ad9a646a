// CUDA kernel of unsam::affinity: threshold a tile of cosine rows and pack it.
//
// The cosines come from cuBLAS (affinity_cuda.cpp); this kernel only turns a
// [rows, n] float tile into bits and per-row counts. One warp per row: 32
// lanes read 32 consecutive cosines (one coalesced 128-byte load) and
// __ballot_sync yields exactly one packed word, bit j % 32 = lane, LSB first.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "ops/cuda/launchers.h"

namespace unsam::cuda {

namespace {

constexpr int kAffinityThreads = 256;
constexpr int kAffinityWarps = kAffinityThreads / 32;

__global__ void __launch_bounds__(kAffinityThreads)
    affinity_pack_kernel(const float* __restrict__ sim, int64_t graphs, int64_t rows, int64_t n,
                         int64_t words, float tau, uint32_t* __restrict__ bits,
                         int32_t* __restrict__ counts) {
  const int lane = threadIdx.x & 31;
  const int64_t total = graphs * rows;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kAffinityWarps;
  // The row index is the same on all lanes, so every __ballot_sync below is
  // reached by the full warp.
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kAffinityWarps + (threadIdx.x >> 5);
       r < total; r += stride) {
    const int64_t g = r / rows;
    const int64_t i = r - g * rows;
    const float* row = sim + r * n;
    uint32_t* out = bits + (g * n + i) * words;
    int32_t cnt = 0;
    for (int64_t k0 = 0; k0 < words; k0 += 32) {
      // Lane l keeps word k0 + l, so the 32 words go out as one coalesced
      // store instead of 32 single-lane stores.
      uint32_t mine = 0;
      const int64_t k1 = k0 + 32 < words ? k0 + 32 : words;
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t j = k * 32 + lane;
        // Same comparison as the CPU kernel (float cosine > float tau); NaN
        // gives no edge. Columns >= n stay 0.
        const bool edge = j < n && row[j] > tau;
        const uint32_t word = __ballot_sync(0xffffffffu, edge);
        if (k - k0 == lane) mine = word;
        cnt += __popc(word);
      }
      if (k0 + lane < words) out[k0 + lane] = mine;
    }
    if (lane == 0) counts[g * n + i] = cnt;
  }
}

}  // namespace

cudaError_t affinity_pack_launch(const float* sim, int64_t graphs, int64_t rows, int64_t n,
                                 float tau, int32_t* bits, int32_t* counts,
                                 cudaStream_t stream) {
  const int64_t total = graphs * rows;
  if (total <= 0 || n <= 0) return cudaSuccess;
  const int64_t words = (n + 31) / 32;
  // Grid-stride over rows: the cap keeps the grid valid for any tile size.
  const int64_t blocks =
      std::min<int64_t>((total + kAffinityWarps - 1) / kAffinityWarps, int64_t{1} << 20);
  affinity_pack_kernel<<<static_cast<unsigned>(blocks), kAffinityThreads, 0, stream>>>(
      sim, graphs, rows, n, words, tau, reinterpret_cast<uint32_t*>(bits), counts);
  return cudaGetLastError();
}

}  // namespace unsam::cuda
