// Eight masks side by side: the vector type and the few vector functions of the dense CRF
// kernel (densecrf_kernel.cpp). GCC vector extensions: AVX2 code inside functions compiled
// with target("avx2"), two SSE registers elsewhere; every operation is per lane and
// IEEE-exact (no FMA, no approximate reciprocal), so both builds give the same bits and a
// mask's result does not depend on the masks beside it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

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

// Tables of rows start on a cache line: with malloc's 16-byte alignment every 32-byte row
// would sit across a 32-byte boundary and one in two across a cache line (split loads and
// stores, no store-to-load forwarding on the splat's read-modify-write chains).
template <class T>
struct LineAligned {
  using value_type = T;
  LineAligned() = default;
  template <class U>
  LineAligned(const LineAligned<U>&) {}
  T* allocate(std::size_t k) { return static_cast<T*>(::operator new(k * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <class U>
  bool operator==(const LineAligned<U>&) const { return true; }
  template <class U>
  bool operator!=(const LineAligned<U>&) const { return false; }
};
using RowTable = std::vector<float, LineAligned<float>>;

// Row r of a table of eight floats per row.
UNSAM_CRF_INLINE const vf8* crf_row(const float* table, int64_t r) { return reinterpret_cast<const vf8*>(table + r * 8); }
UNSAM_CRF_INLINE vf8* crf_row(float* table, int64_t r) { return reinterpret_cast<vf8*>(table + r * 8); }

}  // namespace unsam::ops::cpu
