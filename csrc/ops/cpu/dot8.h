// Dot products in the merge kernels' fixed arithmetic (ops::merge_dot8), several at once.
//
// dot8<K>(x, q, c, out) computes out[k] = merge_dot8(x, q[k], c) for K rows q[k]
// that share the row x. Rows are float32 (an input patch) or float64 (a summed
// representative); a float is widened to double before it is multiplied, so
// the result does not depend on how a row is stored. The arithmetic is that of
// merge_dot8 exactly: lane j (0..7) of each product accumulates channels
// j, j+8, ... in increasing order with one multiply and one add per step (no
// FMA), and the 8 lanes are combined as ((0+1)+(2+3))+((4+5)+(6+7)). So every
// implementation (this one with or without AVX2, the CUDA kernel, the Python
// oracle) gives the same bits.
//
// Why several rows at once: each lane is a chain of dependent additions, so
// one product is bound by the adder's latency (about 3 cycles per 8 channels
// with AVX2); K independent products share the loads of x and keep the adder
// busy.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define UNSAM_X86 1
#endif

namespace unsam::ops::cpu {

inline double lanes_sum(const double* acc) {
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <int K, typename TX, typename TQ>
inline void dot8_generic(const TX* x, const TQ* const* q, int64_t c, double* out) {
  double acc[K][8] = {};
  int64_t i = 0;
  for (; i + 8 <= c; i += 8) {
    for (int j = 0; j < 8; ++j) {
      const double xv = static_cast<double>(x[i + j]);
      for (int k = 0; k < K; ++k) acc[k][j] += xv * static_cast<double>(q[k][i + j]);
    }
  }
  for (int j = 0; i + j < c; ++j) {
    const double xv = static_cast<double>(x[i + j]);
    for (int k = 0; k < K; ++k) acc[k][j] += xv * static_cast<double>(q[k][i + j]);
  }
  for (int k = 0; k < K; ++k) out[k] = lanes_sum(acc[k]);
}

#ifdef UNSAM_X86
__attribute__((target("avx2"))) inline __m256d load4(const double* p) { return _mm256_loadu_pd(p); }
__attribute__((target("avx2"))) inline __m256d load4(const float* p) {
  return _mm256_cvtps_pd(_mm_loadu_ps(p));
}

template <int K, typename TX, typename TQ>
__attribute__((target("avx2"))) void dot8_avx2(const TX* x, const TQ* const* q, int64_t c, double* out) {
  __m256d lo[K], hi[K];
  for (int k = 0; k < K; ++k) lo[k] = hi[k] = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= c; i += 8) {
    const __m256d xl = load4(x + i), xh = load4(x + i + 4);
    for (int k = 0; k < K; ++k) {
      // Separate multiply and add: the same rounding as the scalar lanes.
      lo[k] = _mm256_add_pd(lo[k], _mm256_mul_pd(xl, load4(q[k] + i)));
      hi[k] = _mm256_add_pd(hi[k], _mm256_mul_pd(xh, load4(q[k] + i + 4)));
    }
  }
  for (int k = 0; k < K; ++k) {
    alignas(32) double acc[8];
    _mm256_store_pd(acc, lo[k]);
    _mm256_store_pd(acc + 4, hi[k]);
    for (int j = 0; i + j < c; ++j) acc[j] += static_cast<double>(x[i + j]) * static_cast<double>(q[k][i + j]);
    out[k] = lanes_sum(acc);
  }
}

inline bool have_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#endif

// dst = a + b (float64) and return merge_dot8(dst, dst, c), in one pass; dst may be a.
template <typename TA, typename TB>
inline double add_rows_norm_generic(double* dst, const TA* a, const TB* b, int64_t c) {
  double acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= c; i += 8) {
    for (int j = 0; j < 8; ++j) {
      const double v = static_cast<double>(a[i + j]) + static_cast<double>(b[i + j]);
      dst[i + j] = v;
      acc[j] += v * v;
    }
  }
  for (int j = 0; i + j < c; ++j) {
    const double v = static_cast<double>(a[i + j]) + static_cast<double>(b[i + j]);
    dst[i + j] = v;
    acc[j] += v * v;
  }
  return lanes_sum(acc);
}

#ifdef UNSAM_X86
template <typename TA, typename TB>
__attribute__((target("avx2"))) double add_rows_norm_avx2(double* dst, const TA* a, const TB* b, int64_t c) {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= c; i += 8) {
    const __m256d vl = _mm256_add_pd(load4(a + i), load4(b + i));
    const __m256d vh = _mm256_add_pd(load4(a + i + 4), load4(b + i + 4));
    _mm256_storeu_pd(dst + i, vl);
    _mm256_storeu_pd(dst + i + 4, vh);
    lo = _mm256_add_pd(lo, _mm256_mul_pd(vl, vl));
    hi = _mm256_add_pd(hi, _mm256_mul_pd(vh, vh));
  }
  alignas(32) double acc[8];
  _mm256_store_pd(acc, lo);
  _mm256_store_pd(acc + 4, hi);
  for (int j = 0; i + j < c; ++j) {
    const double v = static_cast<double>(a[i + j]) + static_cast<double>(b[i + j]);
    dst[i + j] = v;
    acc[j] += v * v;
  }
  return lanes_sum(acc);
}
#endif

template <typename TA, typename TB>
inline double add_rows_norm(double* dst, const TA* a, const TB* b, int64_t c) {
#ifdef UNSAM_X86
  if (have_avx2()) return add_rows_norm_avx2(dst, a, b, c);
#endif
  return add_rows_norm_generic(dst, a, b, c);
}

// out[k] = merge_dot8(x, q[k], c) for k < K.
template <int K, typename TX, typename TQ>
inline void dot8(const TX* x, const TQ* const* q, int64_t c, double* out) {
#ifdef UNSAM_X86
  if (have_avx2()) return dot8_avx2<K>(x, q, c, out);
#endif
  dot8_generic<K>(x, q, c, out);
}

template <typename TX, typename TQ>
inline double dot8_one(const TX* x, const TQ* q, int64_t c) {
  double out;
  dot8<1>(x, &q, c, &out);
  return out;
}

}  // namespace unsam::ops::cpu
