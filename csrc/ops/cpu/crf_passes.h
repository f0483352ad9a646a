// The dense CRF's passes (densecrf_kernel.cpp): one pass over the points (slice both
// lattices, sigmoid, splat into the next tables), the splat of stored q by vertex shares
// (split mode), the blur along one lattice axis; eight masks per vector row
// (cpu/crf_simd.h), compiled for AVX2 and for the baseline ISA and chosen at run time.
// Every operation is per lane and in the library's order of additions.
#pragma once

#include <cstdint>
#include <vector>

#include "ops/cpu/crf_simd.h"
#include "ops/cpu/permutohedral.h"

namespace unsam::ops::cpu {

constexpr int64_t kLanes = 8;
// The pass and the blur read rows scattered over the table; asking for the rows of the
// point (vertex) kPrefetch steps ahead hides part of the wait (about 8 % on a BSDS500 image;
// 8 and 32 were no better).
constexpr int64_t kPrefetch = 16;

// One kernel of the CRF on one image: its lattice; per point and corner the splat weight
// (barycentric x n); the slice weight is that times slice_scale (alpha x 2 w), taken in a
// register (the same float product; one stream fewer for the passes to read); c per point.
template <int D>
struct CrfKernel {
  Lattice<D> lat;
  std::vector<float> splat_w;  // [n][D + 1]
  float slice_scale = 0.0f;
  std::vector<float> c;  // [n]
};

struct PassArgs {
  const CrfKernel<2>* g;
  const CrfKernel<5>* b;
  const float* base;    // [n]: -sum_k w_k c_k
  const uint8_t* bits;  // [n]: lane c's mask holds point p when bit c of bits[p] is set (bool masks)
  const float* U;       // [n][8]: the unary's log-odds (float masks; else null)
  float u_on, u_off;
  vi8 first;  // lanes whose mask starts here (-1): delta = u; their rows of the sliced tables are stale
  const float* cg;  // tables sliced (this pass's messages)
  const float* cb;
  float* ng;  // tables splatted into (zero)
  float* nb;
  uint8_t* map;  // or null: map[p] bit c set where lane c's delta > 0 (lanes ending here)
  float* out;    // or null: delta, [n][8] (logits of lanes ending here)
  float* qbuf;   // or null: q goes here, [n][8], for split_splat instead of into the tables
  vf8* max;      // each lane's largest delta over the points
  int64_t n;
  int64_t p0, p1;  // the points of this pass (all of them, or a thread's share: split mode)
};

// One pass over the points p0 .. p1 - 1: delta = u, plus base and both kernels' messages
// (Sliced) in the lanes that do not start here; the MAP bits and/or delta of the lanes that
// end here; and (Splat) q = sigmoid(delta) splatted into the next tables, or (StoreQ)
// stored for split_splat. The pass kind is a template argument and every pointer a local:
// the tables' rows may alias anything, so fields read through `a` would be read again
// after every store.
template <bool Sliced, bool Splat, bool StoreQ, bool Soft>
UNSAM_CRF_INLINE void point_pass_t(const PassArgs& a) {
  const vi8 lane_bit = {1, 2, 4, 8, 16, 32, 64, 128};
  const int32_t* __restrict goff = a.g->lat.offset.data();
  const float* __restrict gw = a.g->splat_w.data();
  const int32_t* __restrict boff = a.b->lat.offset.data();
  const float* __restrict bw = a.b->splat_w.data();
  const float gs = a.g->slice_scale, bs = a.b->slice_scale;
  const float* __restrict base = a.base;
  const uint8_t* __restrict bits = a.bits;
  const float* U = a.U;
  const float* cg = a.cg;
  const float* cb = a.cb;
  float* ng = a.ng;
  float* nb = a.nb;
  uint8_t* map = a.map;
  float* out = a.out;
  float* qbuf = a.qbuf;
  const vi8 first = a.first;
  const vf8 von = vf8{} + a.u_on, voff = vf8{} + a.u_off;
  vf8 mx = vf8{} - 3.0e38f;
  const int64_t n = a.p1, PF = kPrefetch;
  for (int64_t p = a.p0; p < n; ++p) {
    if (p + PF < n) {
      // The bilateral corners a few points ahead: their rows are scattered over the table.
      const int32_t* o = boff + (p + PF) * 6;
      for (int r = 0; r < 6; ++r) {
        if (Sliced) __builtin_prefetch(cb + static_cast<int64_t>(o[r]) * kLanes, 0);
        if (Splat) __builtin_prefetch(nb + static_cast<int64_t>(o[r]) * kLanes, 1);
      }
    }
    const int32_t* go = goff + p * 3;
    const float* gwp = gw + p * 3;
    const int32_t* bo = boff + p * 6;
    const float* bwp = bw + p * 6;
    vf8 u;
    if (Soft) {
      u = *crf_row(U, p);
    } else {
      const vi8 on = ((vi8{} + bits[p]) & lane_bit) != 0;
      u = on ? von : voff;
    }
    vf8 acc = u;
    if (Sliced) {
      acc += base[p];
      for (int r = 0; r < 3; ++r) acc += (gwp[r] * gs) * *crf_row(cg, go[r]);
      for (int r = 0; r < 6; ++r) acc += (bwp[r] * bs) * *crf_row(cb, bo[r]);
      acc = first != 0 ? u : acc;
    }
    mx = acc > mx ? acc : mx;
    if (map) {
      const vi8 fg = (acc > 0.0f) & lane_bit;  // a tie: background (argmax's first label)
      map[p] = static_cast<uint8_t>(fg[0] | fg[1] | fg[2] | fg[3] | fg[4] | fg[5] | fg[6] | fg[7]);
    }
    if (out) *crf_row(out, p) = acc;
    if (StoreQ) *crf_row(qbuf, p) = crf_sigmoid(acc);
    if (Splat) {
      const vf8 q = crf_sigmoid(acc);
      for (int r = 0; r < 3; ++r) *crf_row(ng, go[r]) += gwp[r] * q;
      for (int r = 0; r < 6; ++r) *crf_row(nb, bo[r]) += bwp[r] * q;
    }
  }
  *a.max = mx;
}

template <bool Sliced, bool Soft>
UNSAM_CRF_INLINE void point_pass_k(const PassArgs& a, bool splat) {
  if (!splat) return point_pass_t<Sliced, false, false, Soft>(a);
  if (a.qbuf) return point_pass_t<Sliced, false, true, Soft>(a);
  point_pass_t<Sliced, true, false, Soft>(a);
}

template <bool Soft>
UNSAM_CRF_INLINE void point_pass_s(const PassArgs& a, bool sliced, bool splat) {
  sliced ? point_pass_k<true, Soft>(a, splat) : point_pass_k<false, Soft>(a, splat);
}

UNSAM_CRF_INLINE void point_pass(const PassArgs& a, bool sliced, bool splat) {
  a.U ? point_pass_s<true>(a, sliced, splat) : point_pass_s<false>(a, sliced, splat);
}

// Split mode's splat of one kernel: the stored q of points p0 .. p1 - 1 into the rows
// vlo .. vhi - 1 of the table (a thread's share of the vertices). Each row gets its
// points' terms in raster order, as in the fused pass: the same sums, bit for bit.
template <int D>
UNSAM_CRF_INLINE void splat_part(const int32_t* __restrict off, const float* __restrict w, const float* __restrict q,
                                 float* table, int64_t p0, int64_t p1, int32_t vlo, int32_t vhi) {
  constexpr int D1 = D + 1;
  const int64_t PF = kPrefetch;
  for (int64_t p = p0; p < p1; ++p) {
    if (p + PF < p1)
      for (int r = 0; r < D1; ++r) __builtin_prefetch(table + static_cast<int64_t>(off[(p + PF) * D1 + r]) * kLanes, 1);
    const vf8 qp = *crf_row(q, p);
    for (int r = 0; r < D1; ++r) {
      const int32_t v = off[p * D1 + r];
      if (v >= vlo && v < vhi) *crf_row(table, v) += w[p * D1 + r] * qp;
    }
  }
}

// Blur along one axis, vertices v0 .. v1 - 1: out[v] = t[v] + 0.5 (t[left] + t[right]) (the
// library's order).
UNSAM_CRF_INLINE void blur_pass(const int32_t* __restrict nbr, const float* __restrict t, float* __restrict out,
                                int64_t v0, int64_t m) {
  const int64_t PF = kPrefetch;
  for (int64_t v = v0; v < m; ++v) {
    if (v + PF < m) {
      __builtin_prefetch(t + static_cast<int64_t>(nbr[2 * (v + PF)]) * kLanes, 0);
      __builtin_prefetch(t + static_cast<int64_t>(nbr[2 * (v + PF) + 1]) * kLanes, 0);
    }
    *crf_row(out, v + 1) = *crf_row(t, v + 1) + 0.5f * (*crf_row(t, nbr[2 * v]) + *crf_row(t, nbr[2 * v + 1]));
  }
}

// Compiled for AVX2 and for the baseline ISA; chosen at run time (as dot8.h).
#define UNSAM_CRF_ENTRIES(SUFFIX, ATTR)                                                                          \
  inline ATTR void crf_points_##SUFFIX(const PassArgs& a, bool sliced, bool splat) { point_pass(a, sliced, splat); }   \
  inline ATTR void crf_blur_##SUFFIX(const int32_t* nbr, const float* t, float* out, int64_t v0, int64_t v1) {           \
    blur_pass(nbr, t, out, v0, v1);                                                                              \
  }                                                                                                              \
  inline ATTR void crf_splat2_##SUFFIX(const int32_t* off, const float* w, const float* q, float* table, int64_t p0,     \
                                int64_t p1, int32_t vlo, int32_t vhi) {                                          \
    splat_part<2>(off, w, q, table, p0, p1, vlo, vhi);                                                           \
  }                                                                                                              \
  inline ATTR void crf_splat5_##SUFFIX(const int32_t* off, const float* w, const float* q, float* table, int64_t p0,     \
                                int64_t p1, int32_t vlo, int32_t vhi) {                                          \
    splat_part<5>(off, w, q, table, p0, p1, vlo, vhi);                                                           \
  }
UNSAM_CRF_ENTRIES(base, )
#if defined(__x86_64__) || defined(__i386__)
UNSAM_CRF_ENTRIES(avx2, __attribute__((target("avx2"))))
inline bool crf_have_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#define UNSAM_CRF_PICK(NAME) (crf_have_avx2() ? NAME##_avx2 : NAME##_base)
#else
#define UNSAM_CRF_PICK(NAME) NAME##_base
#endif
inline void crf_points(const PassArgs& a, bool sliced, bool splat) { UNSAM_CRF_PICK(crf_points)(a, sliced, splat); }
inline void crf_blur(const int32_t* nbr, const float* t, float* out, int64_t v0, int64_t v1) {
  UNSAM_CRF_PICK(crf_blur)(nbr, t, out, v0, v1);
}
template <int D>
void crf_splat(const int32_t* off, const float* w, const float* q, float* table, int64_t p0, int64_t p1, int32_t vlo,
               int32_t vhi) {
  if constexpr (D == 2)
    UNSAM_CRF_PICK(crf_splat2)(off, w, q, table, p0, p1, vlo, vhi);
  else
    UNSAM_CRF_PICK(crf_splat5)(off, w, q, table, p0, p1, vlo, vhi);
}

#undef UNSAM_CRF_ENTRIES
#undef UNSAM_CRF_PICK

}  // namespace unsam::ops::cpu
