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
// order of additions); then the blur passes. Each thread runs eight lanes; a lane holds
// one mask from its first pass to its last and then takes the next mask of the call, so
// lanes are at different iterations (a lane's first pass ignores the sliced values). A
// mask whose MAP is proven empty (Bound: most of the small masks MaskCut's step drops,
// after 1-3 iterations) leaves its lane early. Every operation is per lane: a mask's
// result depends neither on the thread count nor on the masks beside it or their order.
// A call with no more masks than one thread's lanes (MaskCut's two or three per image)
// runs one worker whose passes the threads share: the points' slice and sigmoid split by
// points (q stored), the splat split by vertices (each thread adds the terms of its own
// vertices, still in raster order: the same sums), the blur by vertices.
// The per-thread memory is kept small (two tables per kernel, the masks as bits) because
// the pass's accesses to the tables are scattered: what does not fit in the cache is
// paid for on every access, and the threads share the last-level cache.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <vector>

#include "ops/cpu/crf_passes.h"
#include "ops/cpu/crf_simd.h"
#include "ops/cpu/permutohedral.h"
#include "ops/densecrf.h"

namespace unsam::ops {
namespace {

using cpu::crf_blur;
using cpu::crf_points;
using cpu::crf_splat;
using cpu::CrfKernel;
using cpu::kLanes;
using cpu::Lattice;
using cpu::PassArgs;
using cpu::vf8;
using cpu::vi8;

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

// ---------------------------------------------------------------- the masks through the lanes

// A kernel's two value tables, eight lanes per vertex row (row 0: no vertex, always zero):
// the point pass slices one and splats into the other, which the blur then ping-pongs
// with the first (free by then); the result becomes the one sliced next.
struct Tables {
  cpu::RowTable t[2];
  int cur = 0;
  explicit Tables(int64_t m) : t{cpu::RowTable((m + 1) * kLanes), cpu::RowTable((m + 1) * kLanes)} {}
  float* current() { return t[cur].data(); }
  float* next() { return t[1 - cur].data(); }
  // The D + 1 blur passes of next(); leaves the other table zero for the next splat. Over
  // the vertices in parallel (split mode; inside a worker, at::parallel_for runs inline).
  template <int D>
  void blur(const Lattice<D>& lat) {
    int a = 1 - cur;
    for (int j = 0; j <= D; ++j) {
      const int32_t* nbr = lat.nbr.data() + static_cast<int64_t>(j) * lat.m * 2;
      const float* src = t[a].data();
      float* dst = t[1 - a].data();
      at::parallel_for(0, lat.m, 16384, [&](int64_t v0, int64_t v1) { crf_blur(nbr, src, dst, v0, v1); });
      a = 1 - a;
    }
    cur = a;
    float* z = t[1 - a].data();
    at::parallel_for(0, static_cast<int64_t>(t[1 - a].size()), 1 << 18,
                     [&](int64_t e0, int64_t e1) { std::fill(z + e0, z + e1, 0.0f); });
  }
};

struct Image {
  const CrfKernel<2>* g;
  const CrfKernel<5>* b;
  const std::vector<float>* base;
  int64_t iterations;
  // Masks whose MAP is proven empty end early (see Bound); not where the proof does not
  // hold (a negative weight).
  bool early;
};

// The early end of a mask that dies. With the weights w_k >= 0 the messages are a
// positive operator of 2q - 1: if every point's delta is <= l < 0 after an iteration, then
// 2q - 1 <= -a, a = tanh(-l / 2), at every point, and the next iteration's
//   delta_p = u_p + sum_k w_k n_p K_k(n_k (2q - 1))_p <= u_p - a sum_k w_k c_k,p = u_p + a base_p.
// Over the points where u > 0 and those where u <= 0 (a bool mask's inside and outside),
// u_p + a base_p <= max u + a max base of the part. When both parts' bounds are <= l,
// delta stays <= l < 0 at every later iteration: the mask's MAP is empty and its
// remaining iterations can be skipped without changing any output. The bound is loosened
// by 1e-3 (relative and absolute) for the float roundings of the filtered sums it stands
// for (their relative error is ~1e-6).
struct Bound {
  float u_in = -3.0e38f, base_in = -3.0e38f, u_out = -3.0e38f, base_out = -3.0e38f;
  void add(float u, float base) {
    if (u > 0.0f) {
      u_in = std::max(u_in, u);
      base_in = std::max(base_in, base);
    } else {
      u_out = std::max(u_out, u);
      base_out = std::max(base_out, base);
    }
  }
  bool dead(float l) const {
    if (!(l < 0.0f)) return false;
    const double a = std::tanh(-0.5 * static_cast<double>(l)) * (1.0 - 1e-3);
    const auto part = [&](float u, float b) { return u < -1e38f || u + a * b + 1e-3 <= l; };
    return part(u_in, base_in) && part(u_out, base_out);
  }
};

// Split mode: a thread's share of a lattice's vertices (rows v[t] .. v[t + 1] - 1) and the
// points p0[t] .. p1[t] - 1 that have a corner among them.
struct Parts {
  std::vector<int32_t> v;
  std::vector<int64_t> p0, p1;
};

template <int D>
Parts make_parts(const Lattice<D>& lat, int64_t T) {
  constexpr int D1 = D + 1;
  Parts P;
  P.v.resize(T + 1);
  for (int64_t t = 0; t <= T; ++t) P.v[t] = static_cast<int32_t>(1 + lat.m * t / T);
  P.p0.assign(T, lat.n);
  P.p1.assign(T, 0);
  std::mutex mu;
  at::parallel_for(0, lat.n, 16384, [&](int64_t q0, int64_t q1) {
    std::vector<int64_t> lo(T, lat.n), hi(T, 0);
    for (int64_t p = q0; p < q1; ++p)
      for (int r = 0; r < D1; ++r) {
        const int32_t v = lat.offset[p * D1 + r];
        int64_t t = std::min<int64_t>(T - 1, static_cast<int64_t>(v - 1) * T / std::max<int64_t>(1, lat.m));
        while (t > 0 && v < P.v[t]) --t;
        while (t < T - 1 && v >= P.v[t + 1]) ++t;
        lo[t] = std::min(lo[t], p);
        hi[t] = std::max(hi[t], p + 1);
      }
    std::lock_guard<std::mutex> lock(mu);
    for (int64_t t = 0; t < T; ++t) {
      P.p0[t] = std::min(P.p0[t], lo[t]);
      P.p1[t] = std::max(P.p1[t], hi[t]);
    }
  });
  for (int64_t t = 0; t < T; ++t)
    if (P.p0[t] >= P.p1[t]) P.p0[t] = P.p1[t] = 0;
  return P;
}

// One thread's buffers and lanes: each lane holds one mask from its first mean-field pass
// to its last (or its early end), then takes the next mask of the call; so a pass always
// carries as many masks as are left, whichever of them end early.
struct Worker {
  const Image& im;
  const at::Tensor& masks;
  at::Tensor& out;
  bool logits, soft;
  int64_t n;
  float u_on, u_off;
  std::vector<uint8_t> bits;  // [n]
  cpu::RowTable U;            // [n][8] (float masks only)
  std::vector<uint8_t> map;   // [n] (MAP output)
  cpu::RowTable delta;        // [n][8] (logits output)
  Tables tg, tb;
  // Split mode (the call's masks fill one worker's lanes at most: the threads share each
  // pass instead): the pass stores q, then each thread splats its share of the vertices.
  int64_t parts;  // threads sharing a pass (1: not split)
  cpu::RowTable qbuf;
  Parts gparts, bparts;
  int64_t mask[kLanes];  // the lane's mask, -1: none
  int64_t it[kLanes];    // the lane's next iteration
  Bound bound[kLanes];

  Worker(const Image& im_, const at::Tensor& masks_, at::Tensor& out_, bool logits_, int64_t parts_ = 1)
      : im(im_), masks(masks_), out(out_), logits(logits_), soft(masks_.scalar_type() == at::kFloat),
        n(im_.g->lat.n), u_on(crf_unary_logodds(1.0)), u_off(crf_unary_logodds(0.0)), bits(n),
        U(soft ? n * kLanes : 0), map(logits ? 0 : n), delta(logits ? n * kLanes : 0), tg(im_.g->lat.m),
        tb(im_.b->lat.m), parts(parts_), qbuf(parts_ > 1 ? n * kLanes : 0) {
    std::fill(mask, mask + kLanes, int64_t{-1});
    if (parts > 1) {
      gparts = make_parts(im.g->lat, parts);
      bparts = make_parts(im.b->lat, parts);
    }
  }

  // One pass (see point_pass_t); split mode: the points shared by the threads, then the
  // splat by vertex shares.
  void pass(PassArgs& a, bool sliced, bool going_on) {
    if (parts <= 1) {
      crf_points(a, sliced, going_on);
      return;
    }
    std::vector<vf8> mxs(parts);
    a.qbuf = going_on ? qbuf.data() : nullptr;
    at::parallel_for(0, parts, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        PassArgs b = a;
        b.p0 = n * t / parts;
        b.p1 = n * (t + 1) / parts;
        b.max = &mxs[t];
        crf_points(b, sliced, going_on);
      }
    });
    vf8 mx = mxs[0];
    for (int64_t t = 1; t < parts; ++t) mx = mxs[t] > mx ? mxs[t] : mx;
    *a.max = mx;
    if (!going_on) return;
    const Lattice<2>& gl = im.g->lat;
    const Lattice<5>& bl = im.b->lat;
    at::parallel_for(0, parts, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        crf_splat<2>(gl.offset.data(), im.g->splat_w.data(), a.qbuf, a.ng, gparts.p0[t], gparts.p1[t], gparts.v[t],
                     gparts.v[t + 1]);
        crf_splat<5>(bl.offset.data(), im.b->splat_w.data(), a.qbuf, a.nb, bparts.p0[t], bparts.p1[t], bparts.v[t],
                     bparts.v[t + 1]);
      }
    });
  }

  void load(int c, int64_t k) {
    mask[c] = k;
    it[c] = 0;
    const float* base = im.base->data();
    Bound bd;
    if (!soft) {
      const bool* mb = masks.const_data_ptr<bool>() + k * n;
      const uint8_t keep = static_cast<uint8_t>(~(1u << c));
      float in = -3.0e38f, outside = -3.0e38f;
      for (int64_t p = 0; p < n; ++p) {
        bits[p] = static_cast<uint8_t>((bits[p] & keep) | (static_cast<uint8_t>(mb[p]) << c));
        if (mb[p])
          in = std::max(in, base[p]);
        else
          outside = std::max(outside, base[p]);
      }
      if (in > -1e38f) bd.add(u_on, in);
      if (outside > -1e38f) bd.add(u_off, outside);
    } else {
      const float* mf = masks.const_data_ptr<float>() + k * n;
      for (int64_t p = 0; p < n; ++p) {
        const float m = mf[p];
        const float u = m == 0.0f ? u_off : m == 1.0f ? u_on : crf_unary_logodds(m);
        U[p * kLanes + c] = u;
        bd.add(u, base[p]);
      }
    }
    bound[c] = bd;
  }

  void finish(int c, bool dead) {
    const int64_t k = mask[c];
    if (logits) {
      float* of = out.data_ptr<float>() + k * n;
      for (int64_t p = 0; p < n; ++p) of[p] = delta[p * kLanes + c];
    } else {
      bool* ob = out.data_ptr<bool>() + k * n;
      if (dead)
        std::fill(ob, ob + n, false);
      else
        for (int64_t p = 0; p < n; ++p) ob[p] = (map[p] >> c) & 1;
    }
    mask[c] = -1;
  }

  // Takes masks from `next` until none is left.
  void run(std::atomic<int64_t>& next, int64_t K) {
    for (;;) {
      bool any = false, sliced = false, ending = false, going_on = false;
      vi8 first = {};
      for (int c = 0; c < kLanes; ++c) {
        if (mask[c] < 0) {
          const int64_t k = next.fetch_add(1);
          if (k < K) load(c, k);
        }
        if (mask[c] < 0) continue;
        any = true;
        if (it[c] == 0)
          first[c] = -1;
        else
          sliced = true;
        (it[c] == im.iterations ? ending : going_on) = true;
      }
      if (!any) return;
      vf8 mx;
      PassArgs a{im.g, im.b, im.base->data(), bits.data(), soft ? U.data() : nullptr, u_on, u_off, first,
                 tg.current(), tb.current(), tg.next(), tb.next(), ending && !logits ? map.data() : nullptr,
                 ending && logits ? delta.data() : nullptr, nullptr, &mx, n, 0, n};
      pass(a, sliced, going_on);
      for (int c = 0; c < kLanes; ++c) {
        if (mask[c] < 0) continue;
        if (it[c] == im.iterations)
          finish(c, false);
        else if (im.early && !logits && bound[c].dead(mx[c]))
          finish(c, true);
        else
          ++it[c];
      }
      if (going_on) {
        tg.blur<2>(im.g->lat);
        tb.blur<5>(im.b->lat);
      }
    }
  }
};

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
  const Image im{&g, &b, &base, iterations, gw >= 0.0f && bw >= 0.0f};
  // One worker per thread, eight lanes each, the masks handed out one at a time; no more
  // workers than groups of eight masks (a pass costs the same however many lanes it
  // carries). Masks that fill one worker at most: the threads share each of its passes.
  const int64_t threads = at::get_num_threads();
  std::atomic<int64_t> next{0};
  if (K <= kLanes && threads > 1 && n >= 16384 && !at::in_parallel_region()) {
    Worker wk(im, mk, out, logits, threads);
    wk.run(next, K);
    return out;
  }
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, (K + kLanes - 1) / kLanes));
  at::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      Worker wk(im, mk, out, logits);
      wk.run(next, K);
    }
  });
  return out;
}

TORCH_LIBRARY_IMPL(unsam, CPU, m) { m.impl("dense_crf", TORCH_FN(dense_crf_cpu)); }

}  // namespace unsam::ops
