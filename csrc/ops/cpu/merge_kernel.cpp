// CPU backend of unsam::merge_levels: one region per task, regions in parallel.
//
// Exact greedy agglomeration (the next merge is always the adjacent pair of
// highest similarity, then the smallest (a, b)), with two devices that give
// the same merges as evaluating every similarity as soon as it changes, at a
// fraction of the dot products and heap traffic:
//
//  * Lazy bounds. After a merge c = a + b, the similarity of c to a neighbour
//    q is not computed: its dot product is bounded from above by
//    dot(a, q) + dot(b, q), where a missing edge (q touched only a or only b)
//    contributes the Cauchy-Schwarz bound |b| |q|, plus a margin far above the
//    rounding of the sums (1e-12 relative; the exact dot would have at most
//    ~1e-14). Bounds of edges whose both halves were known are tight; the
//    others are loose only by the part that was never computed. An edge's
//    exact similarity is computed (in the exact arithmetic of merge_dot8, so
//    the value is the one the eager kernel, the CUDA kernel and the Python
//    oracle compute) only when its bound reaches the top.
//  * One heap entry per cluster: its best edge in the merge order (key, then
//    bounds before exact values, then (a, b)). Invariant: every edge has a live
//    entry that pops no later than the edge would. An entry popped whose
//    cluster's best edge has since changed is pushed again with the current
//    best; a popped bound is evaluated together with every other bound of that
//    cluster at or above the threshold (they share the cluster's row: several
//    dot products at once, see cpu/dot8.h); a popped exact best edge is the
//    global maximum and is merged.
//
// Patches that never merged are read straight from the float32 input (widened
// to double in the dot products, which gives the same bits); a cluster's
// float64 sum lives in a pool slot from its first merge, recycled when it is
// absorbed. The input is checked for NaN / inf on the way (a patch's squared
// norm is finite exactly when all of its values are).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>
#include <vector>

#include "ops/cpu/dot8.h"
#include "ops/merge.h"

namespace unsam::ops {
namespace {

using cpu::add_rows_norm;
using cpu::dot8;
using cpu::dot8_one;

// A position in the merge order: higher key first, then bounds before exact
// values (a bound equal to an exact key may hide a larger pair), then smaller (a, b).
struct MergeKey {
  double key;
  int32_t a, b;  // a < b
  uint8_t bound;
};

inline bool pops_before(const MergeKey& x, const MergeKey& y) {
  if (x.key != y.key) return x.key > y.key;
  if (x.bound != y.bound) return x.bound > y.bound;
  if (x.a != y.a) return x.a < y.a;
  return x.b < y.b;
}

struct ClusterEntry {
  MergeKey k;
  int32_t owner;
  uint32_t version;  // the owner's version when pushed
};

struct ClusterEntryLess {  // "less" for std::push_heap / pop_heap (max-heap)
  bool operator()(const ClusterEntry& x, const ClusterEntry& y) const { return pops_before(y.k, x.k); }
};

struct PendingEdge {
  int32_t p, q;
  double dot;
};

struct Neighbour {
  int32_t q;
  uint8_t exact;  // hi is the dot product itself (else an upper bound of it)
  double hi;      // dot(sum of this cluster, sum of q), or an upper bound
  double key;     // merge_similarity(hi, |this|^2, |q|^2)
};

class RegionMerger {
 public:
  RegionMerger(int64_t h, int64_t w, int64_t c) : h_(h), w_(w), c_(c), n_(h * w) {}

  // feats: [h*w, c] float32; valid: [h*w] bool or null; labels: [L, h*w].
  // Returns false when feats holds a NaN or inf (labels are then undefined).
  bool run(const float* feats, const bool* valid, const std::vector<double>& thr, int64_t* labels) {
    feats_ = feats;
    reset(valid);
    if (!link_grid()) return false;
    heap_.clear();
    for (int32_t p = 0; p < n_; ++p) {
      if (alive_[p] && !nbrs_[p].empty()) heap_.push_back({best(p), p, version_[p]});
    }
    std::make_heap(heap_.begin(), heap_.end(), ClusterEntryLess());
    for (size_t l = 0; l < thr.size(); ++l) {
      while (!heap_.empty()) {
        const ClusterEntry e = heap_.front();
        if (!(e.k.key >= thr[l])) break;
        std::pop_heap(heap_.begin(), heap_.end(), ClusterEntryLess());
        heap_.pop_back();
        const int32_t x = e.owner;
        if (!alive_[x] || version_[x] != e.version || nbrs_[x].empty()) continue;
        const MergeKey cur = best(x);
        if (cur.key != e.k.key || cur.bound != e.k.bound || cur.a != e.k.a || cur.b != e.k.b) {
          push(x, cur);  // the entry was stale-high: x's edges changed since
        } else if (cur.bound) {
          evaluate_bounds(x, thr[l]);
          push(x, best(x));
        } else {
          merge(cur.a, cur.b);
        }
      }
      int64_t* out = labels + l * n_;
      for (int64_t p = 0; p < n_; ++p) out[p] = alive_or_member(p) ? find(static_cast<int32_t>(p)) : -1;
    }
    return true;
  }

 private:
  void reset(const bool* valid) {
    valid_ = valid;
    slot_.assign(n_, -1);
    free_.clear();
    slots_used_ = 0;
    if (!pool_) pool_.reset(new double[(n_ / 2 + 1) * c_]);  // at most n/2 clusters have merged and live
    norm2_.assign(n_, 0.0);
    norm_.assign(n_, 0.0);
    inv_norm_.assign(n_, 0.0);
    alive_.assign(n_, 0);
    version_.assign(n_, 0);
    parent_.resize(n_);
    nbrs_.resize(n_);
    stamp_.assign(n_, 0);
    side_.assign(n_, 0);
    hi_a_.resize(n_);
    hi_b_.resize(n_);
    tick_ = 0;
    for (int64_t p = 0; p < n_; ++p) {
      parent_[p] = static_cast<int32_t>(p);
      nbrs_[p].clear();
      alive_[p] = !(valid && !valid[p]);
    }
  }

  bool alive_or_member(int64_t p) const { return !(valid_ && !valid_[p]); }

  const double* sum_of(int32_t a) const { return slot_[a] >= 0 ? pool_.get() + slot_[a] * c_ : nullptr; }

  // Squared norms and the exact 4-neighbour edges of the grid: for each patch
  // its own norm and its right and lower neighbours, three products sharing the
  // patch's row. False when a norm is not finite (a NaN or inf in the input).
  bool link_grid() {
    pending_.clear();
    for (int64_t y = 0; y < h_; ++y) {
      for (int64_t x = 0; x < w_; ++x) {
        const int32_t p = static_cast<int32_t>(y * w_ + x);
        if (!alive_[p]) continue;
        const float* rp = feats_ + p * c_;
        const float* rows[3] = {rp, rp, rp};
        int32_t q[2];
        int k = 0;
        if (x + 1 < w_ && alive_[p + 1]) q[k++] = p + 1;
        if (y + 1 < h_ && alive_[p + w_]) q[k++] = static_cast<int32_t>(p + w_);
        for (int j = 0; j < k; ++j) rows[1 + j] = feats_ + q[j] * c_;
        double d[3];
        if (k == 2) dot8<3>(rp, rows, c_, d);
        else if (k == 1) dot8<2>(rp, rows, c_, d);
        else dot8<1>(rp, rows, c_, d);
        if (!std::isfinite(d[0])) return false;  // finite exactly when every value of the row is
        norm2_[p] = d[0];
        norm_[p] = std::sqrt(d[0]);
        inv_norm_[p] = norm_[p] > 0.0 ? 1.0 / norm_[p] : 0.0;
        for (int j = 0; j < k; ++j) pending_.push_back({p, q[j], d[1 + j]});
      }
    }
    for (const PendingEdge& e : pending_) {  // similarities once every norm is known
      const double s = merge_similarity(e.dot, norm2_[e.p], norm2_[e.q]);
      nbrs_[e.p].push_back({e.q, 1, e.dot, s});
      nbrs_[e.q].push_back({e.p, 1, e.dot, s});
    }
    return true;
  }

  void push(int32_t x, const MergeKey& k) {
    heap_.push_back({k, x, version_[x]});
    std::push_heap(heap_.begin(), heap_.end(), ClusterEntryLess());
  }

  MergeKey best(int32_t x) const {
    const std::vector<Neighbour>& v = nbrs_[x];
    MergeKey b{v[0].key, std::min(x, v[0].q), std::max(x, v[0].q), static_cast<uint8_t>(!v[0].exact)};
    for (size_t i = 1; i < v.size(); ++i) {
      if (v[i].key < b.key) continue;  // the common case, decided by the key alone
      const MergeKey k{v[i].key, std::min(x, v[i].q), std::max(x, v[i].q), static_cast<uint8_t>(!v[i].exact)};
      if (pops_before(k, b)) b = k;
    }
    return b;
  }

  static Neighbour* entry(std::vector<Neighbour>& v, int32_t q) {
    for (Neighbour& e : v) {
      if (e.q == q) return &e;
    }
    return nullptr;
  }

  void set_exact(int32_t x, Neighbour& e, double d) {
    const double s = merge_similarity(d, norm2_[x], norm2_[e.q]);
    e = {e.q, 1, d, s};
    *entry(nbrs_[e.q], x) = {x, 1, d, s};
  }

  // Exact dot products of x with every neighbour whose bound is >= t, up to 4 at a time.
  template <typename TX>
  void evaluate_rows(int32_t x, const TX* rx, double t) {
    Neighbour* grp_f[4];
    Neighbour* grp_d[4];
    const float* rows_f[4];
    const double* rows_d[4];
    int nf = 0, nd = 0;
    double out[4];
    auto flush_f = [&]() {
      if (nf == 4) dot8<4>(rx, rows_f, c_, out);
      else if (nf == 3) dot8<3>(rx, rows_f, c_, out);
      else if (nf == 2) dot8<2>(rx, rows_f, c_, out);
      else if (nf == 1) dot8<1>(rx, rows_f, c_, out);
      for (int i = 0; i < nf; ++i) set_exact(x, *grp_f[i], out[i]);
      nf = 0;
    };
    auto flush_d = [&]() {
      if (nd == 4) dot8<4>(rx, rows_d, c_, out);
      else if (nd == 3) dot8<3>(rx, rows_d, c_, out);
      else if (nd == 2) dot8<2>(rx, rows_d, c_, out);
      else if (nd == 1) dot8<1>(rx, rows_d, c_, out);
      for (int i = 0; i < nd; ++i) set_exact(x, *grp_d[i], out[i]);
      nd = 0;
    };
    for (Neighbour& e : nbrs_[x]) {
      if (e.exact || !(e.key >= t)) continue;
      if (const double* sq = sum_of(e.q)) {
        grp_d[nd] = &e;
        rows_d[nd++] = sq;
        if (nd == 4) flush_d();
      } else {
        grp_f[nf] = &e;
        rows_f[nf++] = feats_ + e.q * c_;
        if (nf == 4) flush_f();
      }
    }
    flush_f();
    flush_d();
  }

  void evaluate_bounds(int32_t x, double t) {
    if (const double* sx = sum_of(x)) evaluate_rows(x, sx, t);
    else evaluate_rows(x, feats_ + x * c_, t);
  }

  int32_t find(int32_t p) {
    while (parent_[p] != p) {
      parent_[p] = parent_[parent_[p]];
      p = parent_[p];
    }
    return p;
  }

  // b merges into a (a < b keeps the id = smallest member patch index).
  void merge(int32_t a, int32_t b) {
    const double* sa_old = sum_of(a);
    const float* fa = sa_old ? nullptr : feats_ + a * c_;
    if (!sa_old) {  // a's first merge: its sum gets float64 storage
      if (!free_.empty()) {
        slot_[a] = free_.back();
        free_.pop_back();
      } else {
        slot_[a] = slots_used_++;
      }
    }
    double* sa = pool_.get() + slot_[a] * c_;
    const double* sb = sum_of(b);
    const float* fb = feats_ + b * c_;
    const double norm_a = norm_[a], norm_b = norm_[b];
    if (fa) norm2_[a] = sb ? add_rows_norm(sa, fa, sb, c_) : add_rows_norm(sa, fa, fb, c_);
    else norm2_[a] = sb ? add_rows_norm(sa, sa, sb, c_) : add_rows_norm(sa, sa, fb, c_);
    norm_[a] = std::sqrt(norm2_[a]);
    inv_norm_[a] = norm_[a] > 0.0 ? 1.0 / norm_[a] : 0.0;
    parent_[b] = a;
    alive_[b] = 0;
    if (slot_[b] >= 0) {
      free_.push_back(slot_[b]);
      slot_[b] = -1;
    }
    ++version_[a];
    ++version_[b];
    // The union of both neighbour lists minus {a, b}, deduplicated with a per-merge
    // stamp; side_ says which of a, b each neighbour touched.
    ++tick_;
    merged_.clear();
    for (const Neighbour& e : nbrs_[a]) {
      if (e.q == b) continue;
      stamp_[e.q] = tick_;
      side_[e.q] = 1;
      hi_a_[e.q] = e.hi;
      merged_.push_back(e.q);
    }
    for (const Neighbour& e : nbrs_[b]) {
      if (e.q == a) continue;
      if (stamp_[e.q] != tick_) {
        stamp_[e.q] = tick_;
        side_[e.q] = 2;
        merged_.push_back(e.q);
      } else {
        side_[e.q] = 3;
      }
      hi_b_[e.q] = e.hi;
    }
    std::vector<Neighbour>& na = nbrs_[a];
    na.clear();
    nbrs_[b].clear();
    nbrs_[b].shrink_to_fit();
    const double norm_c = norm_[a];
    for (int32_t q : merged_) {
      const double nq = norm_[q];
      const double ha = (side_[q] & 1) ? hi_a_[q] : norm_a * nq;  // Cauchy-Schwarz where unknown
      const double hb = (side_[q] & 2) ? hi_b_[q] : norm_b * nq;
      const double hi = ha + hb + 1e-12 * (norm_a + norm_b + norm_c) * nq;
      // An upper bound of merge_similarity(hi, ...) without its square root and
      // division: the two formulas differ by a few ulps, far below the 1e-9.
      const double key = hi * inv_norm_[a] * inv_norm_[q] + 1e-9;
      na.push_back({q, 0, hi, key});
      // q listed a, b or both: keep one entry, for a.
      std::vector<Neighbour>& nq_list = nbrs_[q];
      bool seen = false;
      size_t j = 0;
      for (size_t i = 0; i < nq_list.size(); ++i) {
        if (nq_list[i].q == a || nq_list[i].q == b) {
          if (seen) continue;
          seen = true;
          nq_list[j++] = {a, 0, hi, key};
        } else {
          nq_list[j++] = nq_list[i];
        }
      }
      nq_list.resize(j);
    }
    if (!na.empty()) push(a, best(a));
  }

  int64_t h_, w_, c_, n_;
  const float* feats_ = nullptr;
  const bool* valid_ = nullptr;
  uint32_t tick_ = 0;
  std::unique_ptr<double[]> pool_;
  std::vector<int32_t> slot_, free_;
  int32_t slots_used_ = 0;
  std::vector<double> norm2_, norm_, inv_norm_, hi_a_, hi_b_;
  std::vector<uint8_t> alive_, side_;
  std::vector<uint32_t> version_, stamp_;
  std::vector<int32_t> parent_, merged_;
  std::vector<std::vector<Neighbour>> nbrs_;
  std::vector<ClusterEntry> heap_;
  std::vector<PendingEdge> pending_;
};

}  // namespace

at::Tensor merge_levels_cpu(const at::Tensor& feats_in, const std::optional<at::Tensor>& valid_in,
                            at::ArrayRef<double> thresholds) {
  std::vector<double> thr(thresholds.begin(), thresholds.end());
  check_merge_args(feats_in, valid_in, thr);
  const int64_t b = feats_in.size(0), h = feats_in.size(1), w = feats_in.size(2),
                c = feats_in.size(3);
  const int64_t levels = static_cast<int64_t>(thr.size());
  auto labels = at::empty({b, levels, h, w}, feats_in.options().dtype(at::kLong));
  if (b == 0 || h == 0 || w == 0) return labels;
  auto feats = feats_in.contiguous();
  at::Tensor valid;
  if (valid_in.has_value()) valid = valid_in->contiguous();
  const int64_t n = h * w;
  std::atomic<int64_t> bad{-1};
  at::parallel_for(0, b, 1, [&](int64_t r0, int64_t r1) {
    RegionMerger merger(h, w, c);
    for (int64_t r = r0; r < r1; ++r) {
      if (!merger.run(feats.data_ptr<float>() + r * n * c,
                      valid.defined() ? valid.data_ptr<bool>() + r * n : nullptr, thr,
                      labels.data_ptr<int64_t>() + r * levels * n)) {
        bad.store(r);
      }
    }
  });
  TORCH_CHECK_VALUE(bad.load() < 0, "merge_levels: feats contains NaN or inf value(s) (region ", bad.load(),
              "); clean the input first");
  return labels;
}

TORCH_LIBRARY_IMPL(unsam, CPU, m) { m.impl("merge_levels", TORCH_FN(merge_levels_cpu)); }

}  // namespace unsam::ops
