// CUDA backend of unsam::lanczos_fiedler: the CPU kernel's algorithm, batched
// over the graphs of B as ATen work on [B, N] tensors, with the bit-matrix
// product in lanczos_kernel.cu.
//
// Every graph follows the CPU kernel step for step (same start vector,
// deflation of u = sqrt(d) / |sqrt(d)|, full reorthogonalisation twice,
// breakdown at beta <= 1e-12, convergence |beta_m s_m| <= tol tested every 4
// steps and at the last, x = D^-1/2 y / |y| and the sign rule); only rounding
// differs (classical instead of modified Gram-Schmidt, GPU reductions). The
// graphs advance together; a finished graph is frozen: its result is taken at
// its own step count m from its own alpha, beta and V[:, :m], which later steps
// never write, and its next vectors are forced to 0 so nothing can turn into
// NaN. Alpha and beta come to the host every 4 steps (one sync), where the
// small tridiagonal eigenproblems are solved by LAPACK as on the CPU.
//
// Compiled in a unity batch with the CPU kernels: namespace-scope names carry
// the op's name.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cuda/launchers.h"
#include "ops/lanczos.h"

namespace unsam::ops {

// Same cadence as the CPU kernel: test convergence every 4 Lanczos steps.
constexpr int64_t kLanczosCudaCheckEvery = 4;

// Top eigenpairs of `graphs.size()` m x m tridiagonals; graph i's alpha and
// beta are rows graphs[i] of host arrays alpha [B, ld] and beta [B, ld].
// theta[i] and s[i * m .. i * m + m) receive each largest eigenpair.
void lanczos_cuda_ritz(const double* alpha, const double* beta, int64_t ld,
                       const std::vector<int64_t>& graphs, int64_t m, std::vector<double>& theta,
                       std::vector<double>& s) {
  const int64_t count = static_cast<int64_t>(graphs.size());
  auto t = at::zeros({count, m, m}, at::TensorOptions().dtype(at::kDouble));
  double* p = t.data_ptr<double>();
  for (int64_t i = 0; i < count; ++i) {
    const double* a = alpha + graphs[i] * ld;
    const double* b = beta + graphs[i] * ld;
    double* ti = p + i * m * m;
    for (int64_t r = 0; r < m; ++r) {
      ti[r * m + r] = a[r];
      if (r + 1 < m) {
        ti[r * m + r + 1] = b[r];
        ti[(r + 1) * m + r] = b[r];
      }
    }
  }
  auto [evals, evecs] = at::linalg_eigh(t);
  evals = evals.contiguous();
  evecs = evecs.contiguous();
  const double* ev = evals.data_ptr<double>();
  const double* vec = evecs.data_ptr<double>();
  theta.resize(count);
  s.resize(count * m);
  for (int64_t i = 0; i < count; ++i) {
    theta[i] = ev[i * m + (m - 1)];
    for (int64_t r = 0; r < m; ++r) s[i * m + r] = vec[i * m * m + r * m + (m - 1)];
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lanczos_fiedler_cuda(
    const at::Tensor& bits_in, const at::Tensor& deg_in, const std::optional<at::Tensor>& x0_in,
    double eps, double tol, int64_t max_iter) {
  check_lanczos_args(bits_in, deg_in, x0_in, eps, tol, max_iter);
  TORCH_CHECK(bits_in.is_cuda(), "lanczos_fiedler: bits should be a CUDA tensor, got ",
              bits_in.device());
  c10::cuda::CUDAGuard device_guard(bits_in.device());
  const int64_t b = bits_in.size(0), n = bits_in.size(1);
  const auto opts = deg_in.options();
  if (b == 0) {
    return {at::empty({b, n}, opts), at::empty({b}, opts), at::empty({b}, opts.dtype(at::kLong))};
  }
  auto bits = bits_in.contiguous();
  auto deg = deg_in.contiguous();
  TORCH_CHECK(deg.min().item<double>() > 0.0,
              "lanczos_fiedler: deg should be positive everywhere (eps > 0 guarantees it "
              "for degrees from unsam::affinity)");
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t kmax = std::max<int64_t>(1, std::min<int64_t>(max_iter, n - 1));

  auto dinv = deg.rsqrt();
  auto sqrt_d = deg.sqrt();
  // u = sqrt(d) / |sqrt(d)|: the top eigenvector of M, deflated throughout.
  auto u = sqrt_d / deg.sum({-1}, true).sqrt();
  auto deflate = [&](at::Tensor v) {
    for (int pass = 0; pass < 2; ++pass) v = v - (u * v).sum({-1}, true) * u;
    return v;
  };

  // Basis q: row 0 is u, row 1 + i the Lanczos vector v_i, so one bmm
  // reorthogonalises against u and every earlier v.
  auto q = at::zeros({b, kmax + 2, n}, opts);
  q.select(1, 0).copy_(u);

  // Start: x0 * sqrt(d) deflated and normalised; the hash vector where x0 is
  // absent or (numerically) a multiple of the trivial eigenvector. Like the
  // CPU kernel, the hash start is left unnormalised if it failed too.
  auto hash_cpu = at::empty({n}, at::TensorOptions().dtype(at::kDouble));
  {
    double* hp = hash_cpu.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i) hp[i] = lanczos_start_value(i);
  }
  auto start = deflate(hash_cpu.to(deg.device()).unsqueeze(0).expand({b, n}));
  {
    auto nv = start.norm(2, {-1}, true);
    start = at::where((nv > 1e-10).logical_and(nv.isfinite()), start / nv, start);
  }
  if (x0_in.has_value()) {
    auto v = deflate(x0_in->to(at::kDouble) * sqrt_d);
    auto nv = v.norm(2, {-1}, true);
    // Warm start plus a little of the hash vector (see kLanczosWarmMix).
    auto w = deflate(v / nv + kLanczosWarmMix * start);
    auto nw = w.norm(2, {-1}, true);
    start = at::where((nv > 1e-10).logical_and(nv.isfinite()), w / nw, start);
  }
  q.select(1, 1).copy_(start);

  auto alpha_d = at::zeros({b, kmax}, opts);
  auto beta_d = at::zeros({b, kmax}, opts);
  auto active_d = at::ones({b}, opts.dtype(at::kByte));
  auto bv = at::empty({b, n}, opts);
  auto zeros_bn = at::zeros({b, n}, opts);

  std::vector<uint8_t> active(b, 1);
  int64_t remaining = b;
  // Host: each finished graph's Ritz vector s, zero past its own m.
  auto coef = at::zeros({b, kmax + 1}, at::TensorOptions().dtype(at::kDouble));
  std::vector<double> lam_h(b, 0.0);
  std::vector<int64_t> iters_h(b, 0);
  double* coef_p = coef.data_ptr<double>();
  auto finish = [&](int64_t g, int64_t m, double theta, const double* s) {
    std::copy(s, s + m, coef_p + g * (kmax + 1));
    lam_h[g] = 1.0 - theta;
    iters_h[g] = m;
    active[g] = 0;
    --remaining;
  };

  int64_t last_check = 0;
  std::vector<double> theta, svec;
  for (int64_t j = 0; j < kmax && remaining > 0; ++j) {
    auto vj = q.select(1, j + 1);
    // M v = D^-1/2 ((1 - eps) B (D^-1/2 v) + eps (1^T D^-1/2 v) 1), as the CPU kernel.
    auto tmp = (vj * dinv).contiguous();
    auto s = tmp.sum({-1}, true);
    const cudaError_t err = unsam::cuda::lanczos_bitmatvec_launch(
        bits.data_ptr<int32_t>(), tmp.data_ptr<double>(), active_d.data_ptr<uint8_t>(), b, n,
        bv.data_ptr<double>(), stream.stream());
    TORCH_CHECK(err == cudaSuccess, "lanczos_fiedler: CUDA kernel launch failed: ",
                cudaGetErrorString(err));
    auto wv = dinv * ((1.0 - eps) * bv + eps * s);
    alpha_d.select(1, j).copy_((vj * wv).sum({-1}));
    // Full reorthogonalisation, classical Gram-Schmidt twice, against u and
    // v_0..v_j (the CPU kernel's two passes, as two batched GEMVs each).
    auto basis = q.narrow(1, 0, j + 2);
    for (int pass = 0; pass < 2; ++pass) {
      auto c = at::bmm(basis, wv.unsqueeze(-1));
      wv = wv - at::bmm(basis.transpose(1, 2), c).squeeze(-1);
    }
    auto bnorm = wv.norm(2, {-1});
    beta_d.select(1, j).copy_(bnorm);
    // Breakdown or finished: the next vector is 0, never w / tiny.
    auto ok = (bnorm > 1e-12).logical_and(active_d.to(at::kBool));
    auto safe = at::where(ok, bnorm, at::ones_like(bnorm));
    q.select(1, j + 2).copy_(at::where(ok.unsqueeze(-1), wv / safe.unsqueeze(-1), zeros_bn));

    const int64_t m = j + 1;
    if (m % kLanczosCudaCheckEvery != 0 && m != kmax) continue;
    auto ab = at::stack({alpha_d.narrow(1, 0, m), beta_d.narrow(1, 0, m)}).cpu().contiguous();
    const double* ah = ab.data_ptr<double>();
    const double* bh = ah + b * m;
    // A breakdown since the last check ends that graph at its own step, as the
    // CPU kernel would have stopped there (its later steps ran on zeros).
    std::vector<int64_t> check;
    for (int64_t g = 0; g < b; ++g) {
      if (!active[g]) continue;
      int64_t stop = 0;
      for (int64_t mm = last_check + 1; mm <= m && stop == 0; ++mm) {
        if (!(bh[g * m + mm - 1] > 1e-12)) stop = mm;
      }
      if (stop == 0) {
        check.push_back(g);
        continue;
      }
      lanczos_cuda_ritz(ah, bh, m, {g}, stop, theta, svec);
      finish(g, stop, theta[0], svec.data());
    }
    if (!check.empty()) {
      lanczos_cuda_ritz(ah, bh, m, check, m, theta, svec);
      for (size_t i = 0; i < check.size(); ++i) {
        const int64_t g = check[i];
        const double* si = svec.data() + i * m;
        const double resid = std::abs(bh[g * m + m - 1] * si[m - 1]);
        if (resid <= tol || m == kmax) finish(g, m, theta[i], si);
      }
    }
    last_check = m;
    if (remaining > 0) {
      auto act = at::empty({b}, at::TensorOptions().dtype(at::kByte));
      std::copy(active.begin(), active.end(), act.data_ptr<uint8_t>());
      active_d.copy_(act);
    }
  }
  TORCH_CHECK(remaining == 0, "lanczos_fiedler: internal error, ", remaining,
              " graph(s) left unfinished");

  // y = V s, x = D^-1/2 y / |y| (then x^T D x = 1), sign: the entry of
  // largest |x| (argmax returns the first of equals) is positive.
  auto coef_d = coef.to(deg.device());
  auto y = at::bmm(coef_d.unsqueeze(1), q.narrow(1, 1, kmax + 1)).squeeze(1);
  auto x = dinv * y / y.norm(2, {-1}, true);
  auto imax = x.abs().argmax(-1, true);
  x = at::where(x.gather(-1, imax) < 0, -x, x).contiguous();
  auto lam = at::tensor(lam_h, at::TensorOptions().dtype(at::kDouble)).to(deg.device());
  auto iters = at::tensor(iters_h, at::TensorOptions().dtype(at::kLong)).to(deg.device());
  return {x, lam, iters};
}

TORCH_LIBRARY_IMPL(unsam, CUDA, m) {
  m.impl("lanczos_fiedler", TORCH_FN(lanczos_fiedler_cuda));
}

}  // namespace unsam::ops
