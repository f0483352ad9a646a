// Eight masks side by side: the vector type and the few vector functions of the dense CRF
// kernel (densecrf_kernel.cpp). GCC vector extensions: AVX2 code inside functions compiled
// with target("avx2"), two SSE registers elsewhere; every operation is per lane and
// IEEE-exact (no FMA, no approximate reciprocal), so both builds give the same bits and a
// mask's result does not depend on the masks beside it.
#pragma once

#include <cstdint>

namespace unsam::ops::cpu {

#define UNSAM_CRF_INLINE inline __attribute__((always_inline))

// Unaligned (rows of eight floats start anywhere) and aliasing floats.
typedef float vf8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t vi8 __attribute__((vector_size(32), aligned(4), may_alias));

// e^x, about 1 ulp on [-87, 87] (Cephes' expf: 2^n e^r, |r| <= ln2 / 2, a degree-6
// polynomial), branch-free.
UNSAM_CRF_INLINE vf8 crf_exp(vf8 x) {
  x = x < -87.0f ? vf8{} - 87.0f : x;
  x = x > 87.0f ? vf8{} + 87.0f : x;
  const vf8 t = x * 1.44269504088896341f;
  const vf8 n = (t + 12582912.0f) - 12582912.0f;  // round to nearest (|t| < 2^22)
  vf8 r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const vf8 z = r * r;
  vf8 y = r * 1.9875691500e-4f + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  const vi8 bits = (__builtin_convertvector(n, vi8) + 127) << 23;
  return y * reinterpret_cast<const vf8&>(bits);
}

// The foreground's marginal from its log-odds.
UNSAM_CRF_INLINE vf8 crf_sigmoid(vf8 x) { return 1.0f / (1.0f + crf_exp(-x)); }

// Row r of a table of eight floats per row.
UNSAM_CRF_INLINE const vf8* crf_row(const float* table, int64_t r) { return reinterpret_cast<const vf8*>(table + r * 8); }
UNSAM_CRF_INLINE vf8* crf_row(float* table, int64_t r) { return reinterpret_cast<vf8*>(table + r * 8); }

}  // namespace unsam::ops::cpu
