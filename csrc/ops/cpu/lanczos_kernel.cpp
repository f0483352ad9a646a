// CPU backend of unsam::lanczos_fiedler.
//
// One graph per task (graphs of a batch run in parallel); a single graph runs
// its matvec rows in parallel instead. Everything is float64.
//
// The matvec with the bit matrix uses byte lookup tables ("method of the four
// Russians"): for each group of 8 columns a 256-entry table holds the sum of
// the vector entries for every bit pattern, so a row costs N/8 table reads
// instead of N bit tests. Building the tables costs 256 N / 8 adds, the same as
// one row of work per 8 rows of the graph.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "ops/lanczos.h"

namespace unsam::ops {
namespace {

struct LanczosGraph {
  const uint8_t* bytes;   // row-major, n rows of w * 4 bytes (little-endian words)
  const double* dinv;     // D^-1/2
  int64_t n;
  int64_t w;
  double eps;
};

// out = M v with M = D^-1/2 ((1 - eps) B + eps 1 1^T) D^-1/2.
void lanczos_matvec(const LanczosGraph& g, const double* v, double* out, double* tmp,
                    double* table, bool parallel) {
  const int64_t n = g.n;
  const int64_t nbytes = g.w * 4;
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    tmp[i] = g.dinv[i] * v[i];
    s += tmp[i];
  }
  for (int64_t i = n; i < nbytes * 8; ++i) tmp[i] = 0.0;
  auto build = [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      double* t = table + k * 256;
      const double* x = tmp + k * 8;
      t[0] = 0.0;
      for (int e = 0; e < 8; ++e) {
        const int lo = 1 << e;
        const double xe = x[e];
        for (int m = 0; m < lo; ++m) t[lo + m] = t[m] + xe;
      }
    }
  };
  auto rows = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = g.bytes + r * nbytes;
      double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      int64_t k = 0;
      for (; k + 4 <= nbytes; k += 4) {
        a0 += table[(k + 0) * 256 + row[k + 0]];
        a1 += table[(k + 1) * 256 + row[k + 1]];
        a2 += table[(k + 2) * 256 + row[k + 2]];
        a3 += table[(k + 3) * 256 + row[k + 3]];
      }
      for (; k < nbytes; ++k) a0 += table[k * 256 + row[k]];
      out[r] = g.dinv[r] * ((1.0 - g.eps) * ((a0 + a1) + (a2 + a3)) + g.eps * s);
    }
  };
  if (parallel) {
    at::parallel_for(0, nbytes, 64, build);
    at::parallel_for(0, n, 64, rows);
  } else {
    build(0, nbytes);
    rows(0, n);
  }
}

double dot(const double* a, const double* b, int64_t n) {
  double s0 = 0, s1 = 0;
  int64_t i = 0;
  for (; i + 2 <= n; i += 2) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
  }
  if (i < n) s0 += a[i] * b[i];
  return s0 + s1;
}

void axpy(double alpha, const double* x, double* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// Largest eigenpair of the m x m symmetric tridiagonal (alpha, beta).
// LAPACK through at::linalg_eigh: m is at most a few hundred.
void top_ritz_pair(const std::vector<double>& alpha, const std::vector<double>& beta, int64_t m,
                   double* theta, std::vector<double>& s) {
  auto t = at::zeros({m, m}, at::TensorOptions().dtype(at::kDouble));
  double* p = t.data_ptr<double>();
  for (int64_t i = 0; i < m; ++i) {
    p[i * m + i] = alpha[i];
    if (i + 1 < m) {
      p[i * m + i + 1] = beta[i];
      p[(i + 1) * m + i] = beta[i];
    }
  }
  auto [evals, evecs] = at::linalg_eigh(t);
  evecs = evecs.contiguous();
  const double* ev = evecs.data_ptr<double>();
  *theta = evals.data_ptr<double>()[m - 1];
  s.resize(m);
  for (int64_t i = 0; i < m; ++i) s[i] = ev[i * m + (m - 1)];
}

struct FiedlerResult {
  double lam;
  int64_t iters;
};

FiedlerResult fiedler_one(const LanczosGraph& g, const double* deg, const double* x0,
                          double tol, int64_t max_iter, double* x_out, bool parallel) {
  const int64_t n = g.n;
  const int64_t kmax = std::max<int64_t>(1, std::min<int64_t>(max_iter, n - 1));
  std::vector<double> u(n), tmp(g.w * 32), table(g.w * 4 * 256), wv(n);
  std::vector<double> basis((kmax + 1) * n);
  // u = sqrt(d) / |sqrt(d)|: the top eigenvector of M, deflated throughout.
  double unorm = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    u[i] = std::sqrt(deg[i]);
    unorm += deg[i];
  }
  unorm = std::sqrt(unorm);
  for (int64_t i = 0; i < n; ++i) u[i] /= unorm;

  auto orthonormal_start = [&](double* v, bool from_x0) -> bool {
    for (int64_t i = 0; i < n; ++i) {
      v[i] = from_x0 ? x0[i] * std::sqrt(deg[i]) : lanczos_start_value(i);
    }
    for (int pass = 0; pass < 2; ++pass) axpy(-dot(u.data(), v, n), u.data(), v, n);
    const double nv = std::sqrt(dot(v, v, n));
    if (!(nv > 1e-10) || !std::isfinite(nv)) return false;
    for (int64_t i = 0; i < n; ++i) v[i] /= nv;
    return true;
  };
  double* v0 = basis.data();
  orthonormal_start(v0, false);
  if (x0 != nullptr) {
    std::vector<double> warm(n);
    if (orthonormal_start(warm.data(), true)) {
      // Warm start plus a little of the hash vector (see kLanczosWarmMix).
      for (int64_t i = 0; i < n; ++i) warm[i] += kLanczosWarmMix * v0[i];
      for (int pass = 0; pass < 2; ++pass) axpy(-dot(u.data(), warm.data(), n), u.data(), warm.data(), n);
      const double nw = std::sqrt(dot(warm.data(), warm.data(), n));
      for (int64_t i = 0; i < n; ++i) v0[i] = warm[i] / nw;
    }
  }

  std::vector<double> alpha, beta;
  std::vector<double> s;
  double theta = 0.0;
  int64_t m = 0;
  const int64_t check_every = 4;
  for (int64_t j = 0; j < kmax; ++j) {
    const double* vj = basis.data() + j * n;
    lanczos_matvec(g, vj, wv.data(), tmp.data(), table.data(), parallel);
    const double a = dot(vj, wv.data(), n);
    alpha.push_back(a);
    // Full reorthogonalisation (classical Gram-Schmidt, twice) against u and
    // every earlier Lanczos vector: this also removes the three-term terms.
    for (int pass = 0; pass < 2; ++pass) {
      axpy(-dot(u.data(), wv.data(), n), u.data(), wv.data(), n);
      for (int64_t i = 0; i <= j; ++i) {
        const double* vi = basis.data() + i * n;
        axpy(-dot(vi, wv.data(), n), vi, wv.data(), n);
      }
    }
    const double b = std::sqrt(dot(wv.data(), wv.data(), n));
    m = j + 1;
    // Breakdown: the Krylov space is invariant, its Ritz pairs are exact.
    const bool breakdown = !(b > 1e-12);
    if (breakdown || m == kmax || (m >= 2 && m % check_every == 0)) {
      top_ritz_pair(alpha, beta, m, &theta, s);
      const double resid = std::abs(b * s[m - 1]);
      if (breakdown || resid <= tol || m == kmax) break;
    }
    beta.push_back(b);
    double* vn = basis.data() + (j + 1) * n;
    for (int64_t i = 0; i < n; ++i) vn[i] = wv[i] / b;
  }
  // y = V s, x = D^-1/2 y (then x^T D x = |y|^2 = 1).
  std::vector<double> y(n, 0.0);
  for (int64_t i = 0; i < m; ++i) axpy(s[i], basis.data() + i * n, y.data(), n);
  const double ny = std::sqrt(dot(y.data(), y.data(), n));
  int64_t imax = 0;
  double amax = -1.0;
  for (int64_t i = 0; i < n; ++i) {
    x_out[i] = g.dinv[i] * y[i] / ny;
    if (std::abs(x_out[i]) > amax) {
      amax = std::abs(x_out[i]);
      imax = i;
    }
  }
  if (x_out[imax] < 0) {
    for (int64_t i = 0; i < n; ++i) x_out[i] = -x_out[i];
  }
  return {1.0 - theta, m};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> lanczos_fiedler_cpu(
    const at::Tensor& bits_in, const at::Tensor& deg_in, const std::optional<at::Tensor>& x0_in,
    double eps, double tol, int64_t max_iter) {
  check_lanczos_args(bits_in, deg_in, x0_in, eps, tol, max_iter);
  const int64_t b = bits_in.size(0), n = bits_in.size(1), w = bits_in.size(2);
  auto bits = bits_in.contiguous();
  auto deg = deg_in.contiguous();
  TORCH_CHECK(b == 0 || deg.min().item<double>() > 0.0,
              "lanczos_fiedler: deg should be positive everywhere (eps > 0 guarantees it "
              "for degrees from unsam::affinity)");
  auto dinv = deg.rsqrt().contiguous();
  at::Tensor x0;
  if (x0_in.has_value()) x0 = x0_in->to(at::kDouble).contiguous();
  auto x = at::empty({b, n}, deg.options());
  auto lam = at::empty({b}, deg.options());
  auto iters = at::empty({b}, deg.options().dtype(at::kLong));
  auto run = [&](int64_t g, bool parallel) {
    LanczosGraph graph{reinterpret_cast<const uint8_t*>(bits.data_ptr<int32_t>() + g * n * w),
                       dinv.data_ptr<double>() + g * n, n, w, eps};
    const double* xg = x0.defined() ? x0.data_ptr<double>() + g * n : nullptr;
    auto r = fiedler_one(graph, deg.data_ptr<double>() + g * n, xg, tol, max_iter,
                         x.data_ptr<double>() + g * n, parallel);
    lam.data_ptr<double>()[g] = r.lam;
    iters.data_ptr<int64_t>()[g] = r.iters;
  };
  if (b < at::get_num_threads()) {
    for (int64_t g = 0; g < b; ++g) run(g, true);
  } else {
    at::parallel_for(0, b, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) run(g, false);
    });
  }
  return {x, lam, iters};
}

TORCH_LIBRARY_IMPL(unsam, CPU, m) { m.impl("lanczos_fiedler", TORCH_FN(lanczos_fiedler_cpu)); }

}  // namespace unsam::ops
