// CPU backend of unsam::dense_crf (see ops/densecrf.h).
//
// Per image: the two lattices (cpu/permutohedral.h) and, per kernel, the library's
// symmetric normalisation n = 1 / sqrt(K 1 + 1e-20) and the filtered constant
// c = n K n. Per mask the two labels reduce to the foreground's log-odds
//   delta = u + sum_k w_k (2 n_k K_k(n_k q) - c_k),   q = 1 / (1 + exp(-delta)),
// u the unary's log-odds (U_bg - U_fg): the library's update exp(-U_l + sum_k w_k
// n_k K_k(n_k Q_l)), normalised over the two labels, is exactly this (K is linear
// and Q_bg = 1 - Q_fg).
//
// Masks go through the lattices KC = 8 KV at a time, side by side: a point's or a
// vertex's KC values are contiguous, so every step is a few vector operations over the
// masks and the lattice's indices and weights are read once for KC masks. One pass over
// the pixels per iteration slices both lattices, takes the sigmoid and splats the new q
// straight into the next iteration's lattices (the splat visits the points in raster
// order, the library's order of additions); then the blur passes. A group of masks runs
// on one thread from start to end and the groups run in parallel: no barrier per step,
// and a mask's result does not depend on the thread count or on its group (every
// operation is per lane). The steps are compiled for AVX2 and for the baseline ISA and
// chosen at run time (as dot8.h); no FMA, so both give the same bits.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "ops/cpu/permutohedral.h"
#include "ops/densecrf.h"

namespace unsam::ops {
namespace {

using cpu::Lattice;

// One kernel of the CRF on one image: its lattice; per point and corner the splat weight
// (barycentric x n) and the slice weight (barycentric x alpha x n x 2 w); c per point.
template <int D>
struct CrfKernel {
  Lattice<D> lat;
  std::vector<float> splat_w;  // [n][D + 1]
  std::vector<float> slice_w;  // [n][D + 1]
  std::vector<float> c;        // [n]
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
  k.slice_w.resize(n * D1);
  const float scale = Lattice<D>::alpha() * 2.0f * compat;
  for (int64_t e = 0; e < n * D1; ++e) {
    k.splat_w[e] = k.lat.weight[e] * norm[e / D1];
    k.slice_w[e] = k.lat.weight[e] * norm[e / D1] * scale;
  }
  return k;
}

#define UNSAM_CRF_INLINE inline __attribute__((always_inline))

// Eight floats as one GCC vector: AVX2 code inside target("avx2") functions, two SSE
// registers elsewhere. Unaligned (rows of KC floats start anywhere) and aliasing floats.
typedef float vf8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t vi8 __attribute__((vector_size(32), aligned(4), may_alias));

// e^x, about 1 ulp on [-87, 87] (Cephes' expf: 2^n e^r, |r| <= ln2 / 2, a degree-6
// polynomial), eight at a time and branch-free.
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

UNSAM_CRF_INLINE vf8 crf_sigmoid(vf8 x) { return 1.0f / (1.0f + crf_exp(-x)); }

template <int KV>
UNSAM_CRF_INLINE const vf8* row(const float* L, int64_t r) {
  return reinterpret_cast<const vf8*>(L + r * 8 * KV);
}
template <int KV>
UNSAM_CRF_INLINE vf8* row(float* L, int64_t r) {
  return reinterpret_cast<vf8*>(L + r * 8 * KV);
}

template <int D, int KV>
UNSAM_CRF_INLINE void slice_add(const CrfKernel<D>& k, const float* __restrict L, int64_t p, vf8* acc) {
  constexpr int D1 = D + 1;
  const int32_t* off = k.lat.offset.data() + p * D1;
  const float* w = k.slice_w.data() + p * D1;
  for (int r = 0; r < D1; ++r) {
    const vf8* v = row<KV>(L, off[r]);
    for (int j = 0; j < KV; ++j) acc[j] += w[r] * v[j];
  }
}

template <int D, int KV>
UNSAM_CRF_INLINE void splat_add(const CrfKernel<D>& k, float* __restrict L, int64_t p, const vf8* q) {
  constexpr int D1 = D + 1;
  const int32_t* off = k.lat.offset.data() + p * D1;
  const float* w = k.splat_w.data() + p * D1;
  for (int r = 0; r < D1; ++r) {
    vf8* v = row<KV>(L, off[r]);
    for (int j = 0; j < KV; ++j) v[j] += w[r] * q[j];
  }
}

// One pass over points p0..p1 of a group. first: delta = UB (the unary), else UB plus
// both kernels' messages from cg / cb. last: delta is written back into UB; otherwise
// q = sigmoid(delta) is splatted into ng / nb.
template <int KV>
UNSAM_CRF_INLINE void pixel_pass(const CrfKernel<2>& g, const CrfKernel<5>& b, float* __restrict UB,
                                 const float* __restrict cg, const float* __restrict cb, float* __restrict ng,
                                 float* __restrict nb, bool first, bool last, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    vf8* ub = row<KV>(UB, p);
    vf8 acc[KV];
    for (int j = 0; j < KV; ++j) acc[j] = ub[j];
    if (!first) {
      slice_add<2, KV>(g, cg, p, acc);
      slice_add<5, KV>(b, cb, p, acc);
    }
    if (last) {
      for (int j = 0; j < KV; ++j) ub[j] = acc[j];
      continue;
    }
    for (int j = 0; j < KV; ++j) acc[j] = crf_sigmoid(acc[j]);
    splat_add<2, KV>(g, ng, p, acc);
    splat_add<5, KV>(b, nb, p, acc);
  }
}

// Blur along one axis: out[v] = L[v] + 0.5 (L[left] + L[right]) (the library's order).
template <int KV>
UNSAM_CRF_INLINE void blur_pass(const int32_t* __restrict nbr, const float* __restrict L, float* __restrict out,
                                int64_t m) {
  for (int64_t v = 0; v < m; ++v) {
    const vf8* a = row<KV>(L, v + 1);
    const vf8* l = row<KV>(L, nbr[2 * v]);
    const vf8* r = row<KV>(L, nbr[2 * v + 1]);
    vf8* o = row<KV>(out, v + 1);
    for (int j = 0; j < KV; ++j) o[j] = a[j] + 0.5f * (l[j] + r[j]);
  }
}

#define UNSAM_CRF_VARIANTS(suffix, attr)                                                                       \
  template <int KV>                                                                                            \
  attr void crf_pixels_##suffix(const CrfKernel<2>& g, const CrfKernel<5>& b, float* UB, const float* cg,     \
                                const float* cb, float* ng, float* nb, bool first, bool last, int64_t n) {    \
    pixel_pass<KV>(g, b, UB, cg, cb, ng, nb, first, last, 0, n);                                               \
  }                                                                                                            \
  template <int KV>                                                                                            \
  attr void crf_blur_##suffix(const int32_t* nbr, const float* L, float* out, int64_t m) {                    \
    blur_pass<KV>(nbr, L, out, m);                                                                             \
  }

UNSAM_CRF_VARIANTS(base, )
#if defined(__x86_64__) || defined(__i386__)
UNSAM_CRF_VARIANTS(avx2, __attribute__((target("avx2"))))
bool crf_have_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#define UNSAM_CRF_CALL(fn, KV, ...) (crf_have_avx2() ? fn##_avx2<KV>(__VA_ARGS__) : fn##_base<KV>(__VA_ARGS__))
#else
#define UNSAM_CRF_CALL(fn, KV, ...) fn##_base<KV>(__VA_ARGS__)
#endif

// A zeroed float buffer on transparent huge pages where the system offers them on request:
// the pixel pass reads and writes rows spread over tens of MB, and 4 KB pages would make
// most of those accesses TLB misses.
class FloatBuffer {
 public:
  explicit FloatBuffer(int64_t count) : n_(count) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(float);
    constexpr size_t kHuge = size_t(2) << 20;
    const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
    p_ = static_cast<float*>(std::aligned_alloc(bytes >= kHuge ? kHuge : 64, bytes >= kHuge ? rounded : (bytes + 63) / 64 * 64));
    TORCH_CHECK(p_ != nullptr, "dense_crf: out of memory (", bytes, " bytes)");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes >= kHuge) madvise(p_, rounded, MADV_HUGEPAGE);
#endif
    zero();
  }
  ~FloatBuffer() { std::free(p_); }
  FloatBuffer(const FloatBuffer&) = delete;
  FloatBuffer& operator=(const FloatBuffer&) = delete;
  float* data() { return p_; }
  const float* data() const { return p_; }
  void zero() { std::memset(p_, 0, static_cast<size_t>(n_) * sizeof(float)); }
  float& operator[](int64_t i) { return p_[i]; }

 private:
  int64_t n_;
  float* p_;
};

// A kernel's value tables for one group: the blurred values the pixel pass slices (cur),
// the table it splats into (next, zeroed first) and a spare for the blur's ping-pong.
template <int D>
struct Tables {
  FloatBuffer buf[3];
  int cur = 0;
  Tables(int64_t m, int kc) : buf{FloatBuffer((m + 1) * kc), FloatBuffer((m + 1) * kc), FloatBuffer((m + 1) * kc)} {}
  float* next() {
    buf[(cur + 1) % 3].zero();
    return buf[(cur + 1) % 3].data();
  }
  // The D + 1 blur passes of what was splatted into next(); the result becomes cur.
  template <int KV>
  void blur(const Lattice<D>& lat) {
    int a = (cur + 1) % 3, t = (cur + 2) % 3;
    for (int j = 0; j <= D; ++j) {
      UNSAM_CRF_CALL(crf_blur, KV, lat.nbr.data() + static_cast<int64_t>(j) * lat.m * 2, buf[a].data(),
                     buf[t].data(), lat.m);
      std::swap(a, t);
    }
    cur = a;
  }
  const float* current() const { return buf[cur].data(); }
};

// The unary's log-odds U_bg - U_fg of a mask value m, as CutLER computes the unary:
// softmax of the logits (1 - m, m) in float64, clipped at 1e-5, -log, stored as float32.
float crf_unary_logodds(double m) {
  const double lb = 1.0 - m, lf = m, top = std::max(lb, lf);
  const double eb = std::exp(lb - top), ef = std::exp(lf - top);
  const float ub = static_cast<float>(-std::log(std::max(eb / (eb + ef), 1e-5)));
  const float uf = static_cast<float>(-std::log(std::max(ef / (eb + ef), 1e-5)));
  return ub - uf;
}

// Mean field on masks k0 .. k0 + kc - 1 (kc <= 8 KV; the other lanes are padding), on the
// calling thread; writes their rows of out. base: -sum_k w_k c_k per point.
template <int KV>
void crf_group(const CrfKernel<2>& g, const CrfKernel<5>& b, const std::vector<float>& base, const at::Tensor& masks,
               int64_t k0, int64_t kc, int64_t iterations, at::Tensor& out, bool logits) {
  constexpr int KC = 8 * KV;
  const int64_t n = g.lat.n;
  FloatBuffer UB(n * KC);
  const float u_on = crf_unary_logodds(1.0), u_off = crf_unary_logodds(0.0);
  for (int64_t c = 0; c < kc; ++c) {
    if (masks.scalar_type() == at::kBool) {
      const bool* mp = masks.const_data_ptr<bool>() + (k0 + c) * n;
      for (int64_t p = 0; p < n; ++p) UB[p * KC + c] = mp[p] ? u_on : u_off;
    } else {
      const float* mp = masks.const_data_ptr<float>() + (k0 + c) * n;
      for (int64_t p = 0; p < n; ++p)
        UB[p * KC + c] = mp[p] == 1.0f ? u_on : mp[p] == 0.0f ? u_off : crf_unary_logodds(mp[p]);
    }
  }
  if (iterations > 0) {
    Tables<2> tg(g.lat.m, KC);
    Tables<5> tb(b.lat.m, KC);
    for (int64_t it = 0; it <= iterations; ++it) {
      const bool first = it == 0, last = it == iterations;
      float* ng = last ? nullptr : tg.next();
      float* nb = last ? nullptr : tb.next();
      UNSAM_CRF_CALL(crf_pixels, KV, g, b, UB.data(), tg.current(), tb.current(), ng, nb, first, last, n);
      if (first) {
        // From here on UB holds u - sum_k w_k c_k, the part of delta that does not change.
        for (int64_t p = 0; p < n; ++p)
          for (int j = 0; j < KC; ++j) UB[p * KC + j] += base[p];
      }
      if (!last) {
        tg.template blur<KV>(g.lat);
        tb.template blur<KV>(b.lat);
      }
    }
  }
  // UB holds delta = log(Q_fg / Q_bg).
  for (int64_t c = 0; c < kc; ++c) {
    if (logits) {
      float* o = out.data_ptr<float>() + (k0 + c) * n;
      for (int64_t p = 0; p < n; ++p) o[p] = UB[p * KC + c];
    } else {
      bool* o = out.data_ptr<bool>() + (k0 + c) * n;
      for (int64_t p = 0; p < n; ++p) o[p] = UB[p * KC + c] > 0.0f;  // a tie is background (argmax)
    }
  }
}

// Groups of up to kMaxLanes masks; at least as many groups as threads while every group
// still fills a vector.
constexpr int64_t kMaxLanes = 16;

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
        for (int i = 0; i < 3; ++i) f[2 + i] = static_cast<float>(ip[3 * p + i]) / br;
      },
      bw);
  std::vector<float> base(n);
  for (int64_t p = 0; p < n; ++p) base[p] = -(gw * g.c[p] + bw * b.c[p]);

  const int64_t threads = at::get_num_threads();
  const int64_t groups = std::max((K + kMaxLanes - 1) / kMaxLanes, std::min(threads, (K + 7) / 8));
  const int64_t lanes = (K + groups - 1) / groups;
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t gi = g0; gi < g1; ++gi) {
      const int64_t k0 = gi * lanes, kc = std::min(lanes, K - k0);
      if (kc <= 0) continue;
      if (lanes <= 8)
        crf_group<1>(g, b, base, mk, k0, kc, iterations, out, logits);
      else
        crf_group<2>(g, b, base, mk, k0, kc, iterations, out, logits);
    }
  });
  return out;
}

TORCH_LIBRARY_IMPL(unsam, CPU, m) { m.impl("dense_crf", TORCH_FN(dense_crf_cpu)); }

}  // namespace unsam::ops
