// CUDA kernel of unsam::lanczos_fiedler: the batched bit-matrix times vector.
//
// The Lanczos driver (lanczos_cuda.cpp) is batched ATen work on [B, N]
// tensors; the only step ATen cannot express without unpacking the graph is
// B x for the bit-packed B, done here. One warp per row, lanes over the
// row's 32-bit words (coalesced), each lane adding x at its set bits.
// float64 throughout and a fixed reduction order, so the result is
// deterministic run to run.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "ops/cuda/launchers.h"

namespace unsam::cuda {

namespace {

constexpr int kLanczosThreads = 256;
constexpr int kLanczosWarps = kLanczosThreads / 32;

__global__ void __launch_bounds__(kLanczosThreads)
    lanczos_bitmatvec_kernel(const uint32_t* __restrict__ bits, const double* __restrict__ x,
                             const uint8_t* __restrict__ active, int64_t graphs, int64_t n,
                             int64_t words, double* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t total = graphs * n;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kLanczosWarps;
  // Padding bits past column n are not trusted (the CPU kernel ignores them
  // too): mask them off so x is never read out of bounds.
  const int tail = static_cast<int>(n & 31);
  const uint32_t tail_mask = tail ? ((1u << tail) - 1u) : 0xffffffffu;
  // r is warp-uniform, so the shuffles below see the full warp.
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kLanczosWarps + (threadIdx.x >> 5);
       r < total; r += stride) {
    const int64_t g = r / n;
    double acc = 0.0;
    if (active == nullptr || active[g] != 0) {
      const uint32_t* row = bits + r * words;
      const double* xg = x + g * n;
      for (int64_t k = lane; k < words; k += 32) {
        uint32_t word = __ldg(row + k);
        if (k == words - 1) word &= tail_mask;
        const double* xk = xg + k * 32;
        while (word != 0u) {
          acc += __ldg(xk + (__ffs(static_cast<int>(word)) - 1));
          word &= word - 1u;
        }
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) out[r] = acc;
  }
}

}  // namespace

cudaError_t lanczos_bitmatvec_launch(const int32_t* bits, const double* x,
                                     const uint8_t* active, int64_t graphs, int64_t n,
                                     double* out, cudaStream_t stream) {
  const int64_t total = graphs * n;
  if (total <= 0) return cudaSuccess;
  const int64_t words = (n + 31) / 32;
  const int64_t blocks =
      std::min<int64_t>((total + kLanczosWarps - 1) / kLanczosWarps, int64_t{1} << 20);
  lanczos_bitmatvec_kernel<<<static_cast<unsigned>(blocks), kLanczosThreads, 0, stream>>>(
      reinterpret_cast<const uint32_t*>(bits), x, active, graphs, n, words, out);
  return cudaGetLastError();
}

}  // namespace unsam::cuda
