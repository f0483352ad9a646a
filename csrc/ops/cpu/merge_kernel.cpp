// CPU backend of unsam::merge_levels: one region per task, regions in parallel.
//
// Exact greedy agglomeration with a max-heap of candidate edges and lazy
// deletion: an entry is stale once either endpoint has merged since it was
// pushed (per-cluster version stamps). Only the merged cluster's edges get new
// similarities, so every live entry holds the current similarity and the heap
// top is the globally best live pair: O(E log E) per region instead of the
// published O(E) scan per merge.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <queue>
#include <vector>

#include "ops/merge.h"

namespace unsam::ops {
namespace {

struct MergeEdge {
  double sim;
  int32_t a, b;       // cluster ids, a < b
  uint32_t va, vb;    // versions of a and b when pushed
};

// "Less" for std::priority_queue (max-heap): higher sim wins, then smaller (a, b).
struct MergeEdgeLess {
  bool operator()(const MergeEdge& x, const MergeEdge& y) const {
    if (x.sim != y.sim) return x.sim < y.sim;
    if (x.a != y.a) return x.a > y.a;
    return x.b > y.b;
  }
};

class RegionMerger {
 public:
  RegionMerger(int64_t h, int64_t w, int64_t c) : h_(h), w_(w), c_(c), n_(h * w) {}

  // feats: [h*w, c] float32; valid: [h*w] bool or null; labels: [L, h*w].
  void run(const float* feats, const bool* valid, const std::vector<double>& thr,
           int64_t* labels) {
    sums_.assign(n_ * c_, 0.0);
    norm2_.assign(n_, 0.0);
    alive_.assign(n_, 0);
    version_.assign(n_, 0);
    parent_.resize(n_);
    nbrs_.assign(n_, {});
    stamp_.assign(n_, 0);
    tick_ = 0;
    heap_ = {};
    for (int64_t p = 0; p < n_; ++p) {
      parent_[p] = static_cast<int32_t>(p);
      if (valid && !valid[p]) continue;
      alive_[p] = 1;
      double* s = sums_.data() + p * c_;
      const float* f = feats + p * c_;
      for (int64_t k = 0; k < c_; ++k) s[k] = static_cast<double>(f[k]);
      norm2_[p] = merge_dot8(s, s, c_);
    }
    for (int64_t y = 0; y < h_; ++y) {
      for (int64_t x = 0; x < w_; ++x) {
        const int32_t p = static_cast<int32_t>(y * w_ + x);
        if (!alive_[p]) continue;
        if (x + 1 < w_ && alive_[p + 1]) link(p, p + 1);
        if (y + 1 < h_ && alive_[p + w_]) link(p, static_cast<int32_t>(p + w_));
      }
    }
    for (size_t l = 0; l < thr.size(); ++l) {
      while (!heap_.empty()) {
        const MergeEdge e = heap_.top();
        if (!(e.sim >= thr[l])) break;
        heap_.pop();
        if (!alive_[e.a] || !alive_[e.b] || version_[e.a] != e.va || version_[e.b] != e.vb)
          continue;
        merge(e.a, e.b);
      }
      int64_t* out = labels + l * n_;
      for (int64_t p = 0; p < n_; ++p) {
        out[p] = (valid && !valid[p]) ? -1 : find(static_cast<int32_t>(p));
      }
    }
  }

 private:
  void link(int32_t a, int32_t b) {
    nbrs_[a].push_back(b);
    nbrs_[b].push_back(a);
    push(a, b);
  }

  void push(int32_t a, int32_t b) {
    if (a > b) std::swap(a, b);
    const double d = merge_dot8(sums_.data() + a * c_, sums_.data() + b * c_, c_);
    heap_.push({merge_similarity(d, norm2_[a], norm2_[b]), a, b, version_[a], version_[b]});
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
    double* sa = sums_.data() + a * c_;
    const double* sb = sums_.data() + b * c_;
    for (int64_t k = 0; k < c_; ++k) sa[k] = sa[k] + sb[k];
    norm2_[a] = merge_dot8(sa, sa, c_);
    parent_[b] = a;
    alive_[b] = 0;
    ++version_[a];
    ++version_[b];
    // New neighbour list: union of both minus {a, b}, deduplicated with a per-merge
    // stamp (linear; sorting the list of a large cluster at every merge made big
    // regions superlinear); neighbours of b now point to a. Push order does not
    // matter: the heap's order alone decides the next merge.
    ++tick_;
    std::vector<int32_t>& na = nbrs_[a];
    std::vector<int32_t>& nb = nbrs_[b];
    merged_.clear();
    for (const std::vector<int32_t>* list : {&na, &nb}) {
      for (int32_t q : *list) {
        if (q == a || q == b || stamp_[q] == tick_) continue;
        stamp_[q] = tick_;
        merged_.push_back(q);
      }
    }
    na.swap(merged_);
    nb.clear();
    nb.shrink_to_fit();
    for (int32_t q : na) {
      std::vector<int32_t>& nq = nbrs_[q];
      // q listed a, b or both: keep one entry, pointing to a.
      bool seen = false;
      size_t j = 0;
      for (size_t i = 0; i < nq.size(); ++i) {
        int32_t r = nq[i] == b ? a : nq[i];
        if (r == a) {
          if (seen) continue;
          seen = true;
        }
        nq[j++] = r;
      }
      nq.resize(j);
      push(a, q);
    }
  }

  int64_t h_, w_, c_, n_;
  uint32_t tick_ = 0;
  std::vector<uint32_t> stamp_;
  std::vector<int32_t> merged_;
  std::vector<double> sums_, norm2_;
  std::vector<uint8_t> alive_;
  std::vector<uint32_t> version_;
  std::vector<int32_t> parent_;
  std::vector<std::vector<int32_t>> nbrs_;
  std::priority_queue<MergeEdge, std::vector<MergeEdge>, MergeEdgeLess> heap_;
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
  at::parallel_for(0, b, 1, [&](int64_t r0, int64_t r1) {
    RegionMerger merger(h, w, c);
    for (int64_t r = r0; r < r1; ++r) {
      merger.run(feats.data_ptr<float>() + r * n * c,
                 valid.defined() ? valid.data_ptr<bool>() + r * n : nullptr, thr,
                 labels.data_ptr<int64_t>() + r * levels * n);
    }
  });
  return labels;
}

TORCH_LIBRARY_IMPL(unsam, CPU, m) { m.impl("merge_levels", TORCH_FN(merge_levels_cpu)); }

}  // namespace unsam::ops
