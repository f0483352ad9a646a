// CPU backend of unsam::dense_crf (see ops/densecrf.h).
//
// Per image: the two lattices (cpu/permutohedral.h) and, per kernel, the library's
// symmetric normalisation n = 1 / sqrt(K 1 + 1e-20) and the filtered constant c = n K n.
// Per mask the two labels reduce to the foreground's log-odds
//   delta = u + sum_k w_k (2 n_k K_k(n_k q) - c_k),   q = 1 / (1 + exp(-delta)),
// u the unary's log-odds (U_bg - U_fg): the library's update exp(-U_l + sum_k w_k
// n_k K_k(n_k Q_l)), normalised over the two labels, is exactly this (K is linear and
// Q_bg = 1 - Q_fg).
//
// Masks go through the lattices eight at a time, side by side (cpu/crf_simd.h): a
// vertex's eight values are one vector, so every step is a vector operation over the
// masks and the lattice's indices and weights are read once for eight masks. One pass
// over the points per iteration slices both lattices, takes the sigmoid and splats the
// new q straight into the next iteration's table (points in raster order: the library's
// order of additions); then the blur passes. A group of masks runs on one thread from
// start to end and the groups run in parallel: no barrier per step, and a mask's result
// depends neither on the thread count nor on the masks beside it (every operation is
// per lane). The per-thread memory is kept small (two tables per kernel, the masks as
// bits) because the pass's accesses to the tables are scattered: what does not fit in
// the cache is paid for on every access, and the threads share the last-level cache.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ops/cpu/crf_simd.h"
#include "ops/cpu/permutohedral.h"
#include "ops/densecrf.h"

namespace unsam::ops {
namespace {

using cpu::crf_row;
using cpu::crf_sigmoid;
using cpu::Lattice;
using cpu::vf8;
using cpu::vi8;

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

template <int D, class Feature>
CrfKernel<D> make_crf_kernel(int64_t n, Feature feature, float compat) {
  constexpr int D1 = D + 1;
  CrfKernel<D> k;
  k.lat = cpu::build_lattice<D>(n, feature);
  std::vector<float> ones(n, 1.0f), filtered(n), norm(n);
  cpu::filter_channel<D>(k.lat, ones.data(), filtered.data());
  // The library's precision: double, stored as float.
  for (int64_t p = 0; p < n; ++p) norm[p] = static_cast<float>(1.0 / std::sqrt(filtered[p] + 1e-20));
  cpu::filter_channel<D>(k.lat, norm.data(), filtered.data());
  k.c.resize(n);
  for (int64_t p = 0; p < n; ++p) k.c[p] = filtered[p] * norm[p];
  k.splat_w.resize(n * D1);
  k.slice_scale = Lattice<D>::alpha() * 2.0f * compat;
  for (int64_t e = 0; e < n * D1; ++e) k.splat_w[e] = k.lat.weight[e] * norm[e / D1];
  return k;
}

// The unary's log-odds U_bg - U_fg of a mask value m, as CutLER computes the unary:
// softmax of the logits (1 - m, m) in float64, clipped at 1e-5, -log, stored as float32.
float crf_unary_logodds(double m) {
  const double lb = 1.0 - m, lf = m, top = std::max(lb, lf);
  const double eb = std::exp(lb - top), ef = std::exp(lf - top);
  const float ub = static_cast<float>(-std::log(std::max(eb / (eb + ef), 1e-5)));
  const float uf = static_cast<float>(-std::log(std::max(ef / (eb + ef), 1e-5)));
  return ub - uf;
}

// ---------------------------------------------------------------- the hot loops

struct PassArgs {
  const CrfKernel<2>* g;
  const CrfKernel<5>* b;
  const float* base;    // [n]: -sum_k w_k c_k
  const uint8_t* bits;  // [n]: lane c's mask holds point p when bit c of bits[p] is set (bool masks)
  const float* U;       // [n][8]: the unary's log-odds (float masks; else null)
  float u_on, u_off;
  const float* cg;  // tables sliced (this pass's messages)
  const float* cb;
  float* ng;  // tables splatted into (zero)
  float* nb;
  float* out;  // last pass: delta, [n][8]
  bool first, last;
  int64_t n;
};

// One pass over the points: delta = u (+ base and both kernels' messages unless First);
// Last: delta goes to out; else q = sigmoid(delta) is splatted into the next tables. The
// pass kind is a template argument and every pointer a local: the tables' rows may alias
// anything, so fields read through `a` would be read again after every store.
template <bool First, bool Last, bool Soft>
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
  float* out = a.out;
  const vf8 von = vf8{} + a.u_on, voff = vf8{} + a.u_off;
  const int64_t n = a.n, PF = kPrefetch;
  for (int64_t p = 0; p < n; ++p) {
    if (p + PF < n) {
      // The bilateral corners a few points ahead: their rows are scattered over the table.
      const int32_t* o = boff + (p + PF) * 6;
      for (int r = 0; r < 6; ++r) {
        if (!First) __builtin_prefetch(cb + static_cast<int64_t>(o[r]) * kLanes, 0);
        if (!Last) __builtin_prefetch(nb + static_cast<int64_t>(o[r]) * kLanes, 1);
      }
    }
    const int32_t* go = goff + p * 3;
    const float* gwp = gw + p * 3;
    const int32_t* bo = boff + p * 6;
    const float* bwp = bw + p * 6;
    vf8 acc;
    if (Soft) {
      acc = *crf_row(U, p);
    } else {
      const vi8 on = ((vi8{} + bits[p]) & lane_bit) != 0;
      acc = on ? von : voff;
    }
    if (!First) {
      acc += base[p];
      for (int r = 0; r < 3; ++r) acc += (gwp[r] * gs) * *crf_row(cg, go[r]);
      for (int r = 0; r < 6; ++r) acc += (bwp[r] * bs) * *crf_row(cb, bo[r]);
    }
    if (Last) {
      *crf_row(out, p) = acc;
      continue;
    }
    const vf8 q = crf_sigmoid(acc);
    for (int r = 0; r < 3; ++r) *crf_row(ng, go[r]) += gwp[r] * q;
    for (int r = 0; r < 6; ++r) *crf_row(nb, bo[r]) += bwp[r] * q;
  }
}

template <bool Soft>
UNSAM_CRF_INLINE void point_pass_s(const PassArgs& a) {
  if (a.first && a.last) return point_pass_t<true, true, Soft>(a);
  if (a.first) return point_pass_t<true, false, Soft>(a);
  if (a.last) return point_pass_t<false, true, Soft>(a);
  point_pass_t<false, false, Soft>(a);
}

UNSAM_CRF_INLINE void point_pass(const PassArgs& a) { a.U ? point_pass_s<true>(a) : point_pass_s<false>(a); }

// Blur along one axis: out[v] = t[v] + 0.5 (t[left] + t[right]) (the library's order).
UNSAM_CRF_INLINE void blur_pass(const int32_t* __restrict nbr, const float* __restrict t, float* __restrict out,
                                int64_t m) {
  const int64_t PF = kPrefetch;
  for (int64_t v = 0; v < m; ++v) {
    if (v + PF < m) {
      __builtin_prefetch(t + static_cast<int64_t>(nbr[2 * (v + PF)]) * kLanes, 0);
      __builtin_prefetch(t + static_cast<int64_t>(nbr[2 * (v + PF) + 1]) * kLanes, 0);
    }
    *crf_row(out, v + 1) = *crf_row(t, v + 1) + 0.5f * (*crf_row(t, nbr[2 * v]) + *crf_row(t, nbr[2 * v + 1]));
  }
}

// Compiled for AVX2 and for the baseline ISA; chosen at run time (as dot8.h).
void crf_points_base(const PassArgs& a) { point_pass(a); }
void crf_blur_base(const int32_t* nbr, const float* t, float* out, int64_t m) { blur_pass(nbr, t, out, m); }
#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2"))) void crf_points_avx2(const PassArgs& a) { point_pass(a); }
__attribute__((target("avx2"))) void crf_blur_avx2(const int32_t* nbr, const float* t, float* out, int64_t m) {
  blur_pass(nbr, t, out, m);
}
bool crf_have_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
void crf_points(const PassArgs& a) { crf_have_avx2() ? crf_points_avx2(a) : crf_points_base(a); }
void crf_blur(const int32_t* nbr, const float* t, float* out, int64_t m) {
  crf_have_avx2() ? crf_blur_avx2(nbr, t, out, m) : crf_blur_base(nbr, t, out, m);
}
#else
void crf_points(const PassArgs& a) { crf_points_base(a); }
void crf_blur(const int32_t* nbr, const float* t, float* out, int64_t m) { crf_blur_base(nbr, t, out, m); }
#endif

// ---------------------------------------------------------------- one group of masks

// A kernel's two value tables, eight lanes per vertex row (row 0: no vertex, always zero):
// the point pass slices one and splats into the other, which the blur then ping-pongs
// with the first (free by then); the result becomes the one sliced next.
struct Tables {
  cpu::RowTable t[2];
  int cur = 0;
  explicit Tables(int64_t m) : t{cpu::RowTable((m + 1) * kLanes), cpu::RowTable((m + 1) * kLanes)} {}
  float* current() { return t[cur].data(); }
  float* next() { return t[1 - cur].data(); }
  void reset() {
    std::fill(t[0].begin(), t[0].end(), 0.0f);
    std::fill(t[1].begin(), t[1].end(), 0.0f);
    cur = 0;
  }
  // The D + 1 blur passes of next(); leaves the other table zero for the next splat.
  template <int D>
  void blur(const Lattice<D>& lat) {
    int a = 1 - cur;
    for (int j = 0; j <= D; ++j) {
      crf_blur(lat.nbr.data() + static_cast<int64_t>(j) * lat.m * 2, t[a].data(), t[1 - a].data(), lat.m);
      a = 1 - a;
    }
    cur = a;
    std::fill(t[1 - a].begin(), t[1 - a].end(), 0.0f);
  }
};

// One thread's buffers, reused by its groups.
struct Workspace {
  std::vector<uint8_t> bits;  // [n]
  cpu::RowTable U;            // [n][8] (float masks only)
  cpu::RowTable delta;        // [n][8]
  Tables tg, tb;
  Workspace(int64_t n, int64_t mg, int64_t mb, bool soft)
      : bits(n), U(soft ? n * kLanes : 0), delta(n * kLanes), tg(mg), tb(mb) {}
};

struct Image {
  const CrfKernel<2>* g;
  const CrfKernel<5>* b;
  const std::vector<float>* base;
  int64_t iterations;
};

// Mean field on masks k0 .. k0 + kc - 1 (kc <= 8; the other lanes are empty masks), on
// the calling thread; writes their rows of out.
void crf_group(const Image& im, Workspace& ws, const at::Tensor& masks, int64_t k0, int64_t kc, at::Tensor& out,
               bool logits) {
  const int64_t n = im.g->lat.n;
  const float u_on = crf_unary_logodds(1.0), u_off = crf_unary_logodds(0.0);
  const bool soft = masks.scalar_type() == at::kFloat;
  if (!soft) {
    const bool* mb = masks.const_data_ptr<bool>() + k0 * n;
    std::fill(ws.bits.begin(), ws.bits.end(), 0);
    for (int64_t c = 0; c < kc; ++c)
      for (int64_t p = 0; p < n; ++p) ws.bits[p] |= static_cast<uint8_t>(mb[c * n + p]) << c;
  } else {
    const float* mf = masks.const_data_ptr<float>() + k0 * n;
    for (int64_t p = 0; p < n; ++p)
      for (int64_t c = 0; c < kLanes; ++c) {
        const float m = c < kc ? mf[c * n + p] : 0.0f;
        ws.U[p * kLanes + c] = m == 0.0f ? u_off : m == 1.0f ? u_on : crf_unary_logodds(m);
      }
  }
  ws.tg.reset();
  ws.tb.reset();
  for (int64_t it = 0; it <= im.iterations; ++it) {
    const bool first = it == 0, last = it == im.iterations;
    PassArgs a{im.g, im.b, im.base->data(), ws.bits.data(), soft ? ws.U.data() : nullptr, u_on, u_off,
               ws.tg.current(), ws.tb.current(), ws.tg.next(), ws.tb.next(), ws.delta.data(), first, last, n};
    crf_points(a);
    if (last) break;
    ws.tg.blur<2>(im.g->lat);
    ws.tb.blur<5>(im.b->lat);
  }
  // delta = log(Q_fg / Q_bg).
  float* of = logits ? out.data_ptr<float>() + k0 * n : nullptr;
  bool* ob = logits ? nullptr : out.data_ptr<bool>() + k0 * n;
  const float* d = ws.delta.data();
  for (int64_t c = 0; c < kc; ++c) {
    if (of)
      for (int64_t p = 0; p < n; ++p) of[c * n + p] = d[p * kLanes + c];
    else
      for (int64_t p = 0; p < n; ++p) ob[c * n + p] = d[p * kLanes + c] > 0.0f;  // a tie: background (argmax)
  }
}

}  // namespace

at::Tensor dense_crf_cpu(const at::Tensor& image, const at::Tensor& masks, double gaussian_sxy,
                         double gaussian_compat, double bilateral_sxy, double bilateral_srgb,
                         double bilateral_compat, int64_t iterations, bool logits) {
  check_dense_crf_args(image, masks, gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb,
                       bilateral_compat, iterations);
  const int64_t K = masks.size(0), H = image.size(0), W = image.size(1), n = H * W;
  at::Tensor out = at::empty({K, H, W}, masks.options().dtype(logits ? at::kFloat : at::kBool));
  if (K == 0 || n == 0) return out;
  TORCH_CHECK(n < INT32_MAX / 8, "dense_crf: the image is too large (", H, " x ", W, ")");
  const at::Tensor img = image.contiguous();
  const at::Tensor mk = masks.contiguous();
  const uint8_t* ip = img.const_data_ptr<uint8_t>();
  // pydensecrf passes the widths and weights as float; the features are x / sxy in float.
  const float gs = static_cast<float>(gaussian_sxy), bs = static_cast<float>(bilateral_sxy);
  const float br = static_cast<float>(bilateral_srgb);
  const float gw = static_cast<float>(gaussian_compat), bw = static_cast<float>(bilateral_compat);
  const auto g = make_crf_kernel<2>(
      n,
      [&](int64_t p, float* f) {
        f[0] = static_cast<float>(p % W) / gs;
        f[1] = static_cast<float>(p / W) / gs;
      },
      gw);
  const auto b = make_crf_kernel<5>(
      n,
      [&](int64_t p, float* f) {
        f[0] = static_cast<float>(p % W) / bs;
        f[1] = static_cast<float>(p / W) / bs;
        for (int ch = 0; ch < 3; ++ch) f[2 + ch] = static_cast<float>(ip[3 * p + ch]) / br;
      },
      bw);
  std::vector<float> base(n);
  for (int64_t p = 0; p < n; ++p) base[p] = -(gw * g.c[p] + bw * b.c[p]);
  const Image im{&g, &b, &base, iterations};
  const int64_t groups = (K + kLanes - 1) / kLanes;
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    Workspace ws(n, g.lat.m, b.lat.m, mk.scalar_type() == at::kFloat);
    for (int64_t gi = g0; gi < g1; ++gi)
      crf_group(im, ws, mk, gi * kLanes, std::min(kLanes, K - gi * kLanes), out, logits);
  });
  return out;
}

TORCH_LIBRARY_IMPL(unsam, CPU, m) { m.impl("dense_crf", TORCH_FN(dense_crf_cpu)); }

}  // namespace unsam::ops
