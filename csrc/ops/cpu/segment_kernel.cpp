// CPU backends of unsam::graph_segment and unsam::merge_graph (see ops/segment.h).
//
// graph_segment sorts the image's edges once and runs the union-find pass for
// every k in turn (the published hierarchy needs several scales; sorting is
// most of the cost). merge_graph is an exact greedy agglomeration with a
// max-heap and lazy deletion: node ids are never reused (a merge creates node
// N + i), so an entry is stale exactly when one of its endpoints is dead.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <queue>
#include <vector>

#include "ops/segment.h"

namespace unsam::ops {
namespace {

struct PixelEdge {
  float w;
  int32_t a, b;
};

class UnionFind {
 public:
  explicit UnionFind(int64_t n) : parent_(n), size_(n, 1) {
    for (int64_t i = 0; i < n; ++i) parent_[i] = static_cast<int32_t>(i);
  }
  int32_t find(int32_t p) {
    while (parent_[p] != p) {
      parent_[p] = parent_[parent_[p]];
      p = parent_[p];
    }
    return p;
  }
  // Union by size; returns the new root.
  int32_t join(int32_t a, int32_t b) {
    if (size_[a] < size_[b]) std::swap(a, b);
    parent_[b] = a;
    size_[a] += size_[b];
    return a;
  }
  int64_t size(int32_t root) const { return size_[root]; }

 private:
  std::vector<int32_t> parent_;
  std::vector<int64_t> size_;
};

// Sorts by weight, stably: equal weights keep the raster order of generation
// (deterministic). An LSD radix sort on the weights' bit patterns, 3 passes of
// 11 bits: the weights are square roots of sums of squares, non-negative
// floats, which order like their bit patterns as unsigned integers, and every
// pass is stable, so the order is exactly std::stable_sort's by w. Sorting was
// most of graph_segment's time (2.8 M edges at 1024 x 683: 0.2 s by
// std::stable_sort).
void sort_pixel_edges(std::vector<PixelEdge>& edges) {
  constexpr int kBits = 11;
  constexpr uint32_t kMask = (1u << kBits) - 1;
  auto key = [](const PixelEdge& e) {
    uint32_t u;
    std::memcpy(&u, &e.w, sizeof u);
    return u;
  };
  std::vector<PixelEdge> tmp(edges.size());
  for (int shift = 0; shift < 32; shift += kBits) {
    std::array<size_t, kMask + 1> start{};
    for (const PixelEdge& e : edges) ++start[(key(e) >> shift) & kMask];
    if (std::any_of(start.begin(), start.end(), [&](size_t n) { return n == edges.size(); })) continue;
    size_t sum = 0;
    for (size_t& v : start) {
      const size_t t = v;
      v = sum;
      sum += t;
    }
    for (const PixelEdge& e : edges) tmp[start[(key(e) >> shift) & kMask]++] = e;
    edges.swap(tmp);
  }
}

std::vector<PixelEdge> pixel_edges(const float* img, int64_t h, int64_t w, int64_t c) {
  std::vector<PixelEdge> edges;
  edges.reserve(static_cast<size_t>(4 * h * w));
  auto add = [&](int64_t p, int64_t q) {
    double d = 0.0;
    for (int64_t k = 0; k < c; ++k) {
      const double t = static_cast<double>(img[p * c + k]) - static_cast<double>(img[q * c + k]);
      d += t * t;
    }
    edges.push_back({static_cast<float>(std::sqrt(d)), static_cast<int32_t>(p), static_cast<int32_t>(q)});
  };
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      const int64_t p = y * w + x;
      if (x + 1 < w) add(p, p + 1);
      if (y + 1 < h) add(p, p + w);
      if (y + 1 < h && x + 1 < w) add(p, p + w + 1);
      if (y + 1 < h && x > 0) add(p, p + w - 1);
    }
  }
  sort_pixel_edges(edges);
  return edges;
}

void segment_one(const std::vector<PixelEdge>& edges, int64_t n, double k, int64_t min_size,
                 int64_t* labels) {
  UnionFind uf(n);
  std::vector<double> thresh(static_cast<size_t>(n), k);  // Int(C) + k / |C| with Int = 0, |C| = 1
  for (const PixelEdge& e : edges) {
    const int32_t a = uf.find(e.a), b = uf.find(e.b);
    if (a == b || !(e.w <= thresh[a] && e.w <= thresh[b])) continue;
    const int32_t r = uf.join(a, b);
    thresh[r] = static_cast<double>(e.w) + k / static_cast<double>(uf.size(r));
  }
  if (min_size > 1) {
    for (const PixelEdge& e : edges) {
      const int32_t a = uf.find(e.a), b = uf.find(e.b);
      if (a != b && (uf.size(a) < min_size || uf.size(b) < min_size)) uf.join(a, b);
    }
  }
  std::vector<int64_t> id(static_cast<size_t>(n), -1);
  int64_t next = 0;
  for (int64_t p = 0; p < n; ++p) {
    const int32_t r = uf.find(static_cast<int32_t>(p));
    if (id[r] < 0) id[r] = next++;
    labels[p] = id[r];
  }
}

}  // namespace

at::Tensor graph_segment_cpu(const at::Tensor& image_in, at::ArrayRef<double> ks, int64_t min_size) {
  UNSAM_CHECK_DIM(image_in, 3, "graph_segment: image");
  UNSAM_CHECK_DTYPE(image_in, at::kFloat, "graph_segment: image");
  TORCH_CHECK(image_in.size(0) * image_in.size(1) < (int64_t{1} << 30),
              "graph_segment: H * W should be < 2^30, got shape ", shape_str(image_in));
  TORCH_CHECK(!ks.empty(), "graph_segment: ks should not be empty");
  for (size_t i = 0; i < ks.size(); ++i) {
    TORCH_CHECK(std::isfinite(ks[i]) && ks[i] >= 0.0, "graph_segment: ks[", i,
                "] should be finite and >= 0, got ", ks[i]);
  }
  TORCH_CHECK(min_size >= 0, "graph_segment: min_size should be >= 0, got ", min_size);
  check_finite(image_in, "graph_segment", "image");
  const int64_t h = image_in.size(0), w = image_in.size(1), c = image_in.size(2);
  const int64_t s = static_cast<int64_t>(ks.size());
  auto labels = at::empty({s, h, w}, image_in.options().dtype(at::kLong));
  if (h == 0 || w == 0) return labels;
  auto image = image_in.contiguous();
  const std::vector<PixelEdge> edges = pixel_edges(image.data_ptr<float>(), h, w, c);
  std::vector<double> kv(ks.begin(), ks.end());
  at::parallel_for(0, s, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      segment_one(edges, h * w, kv[i], min_size, labels.data_ptr<int64_t>() + i * h * w);
    }
  });
  return labels;
}

namespace {

struct GraphEdge {
  double sim;
  int32_t a, b;  // a < b
};

struct GraphEdgeLess {  // max-heap: higher sim first, then smaller (a, b)
  bool operator()(const GraphEdge& x, const GraphEdge& y) const {
    if (x.sim != y.sim) return x.sim < y.sim;
    if (x.a != y.a) return x.a > y.a;
    return x.b > y.b;
  }
};

class GraphMerger {
 public:
  GraphMerger(int64_t n, int64_t nb, int64_t nc, double w_hist, double w_feat, double w_size,
              double w_fill)
      : n_(n), nb_(nb), nc_(nc), wh_(w_hist), wf_(w_feat), ws_(w_size), wb_(w_fill) {
    const size_t cap = static_cast<size_t>(2 * n);
    hist_.resize(cap * nb_);
    hsum_.resize(cap);
    feat_.resize(cap * nc_);
    fnorm2_.resize(cap);
    area_.resize(cap);
    box_.resize(cap * 4);
    alive_.assign(cap, 0);
    nbrs_.resize(cap);
    stamp_.assign(cap, 0);
  }

  void init(const float* hist, const float* feats, const double* area, const int64_t* boxes,
            const int64_t* edges, int64_t e) {
    total_ = 0.0;
    for (int64_t i = 0; i < n_; ++i) {
      double hs = 0.0;
      for (int64_t k = 0; k < nb_; ++k) hs += hist_[i * nb_ + k] = static_cast<double>(hist[i * nb_ + k]);
      hsum_[i] = hs;
      double f2 = 0.0;
      for (int64_t k = 0; k < nc_; ++k) {
        const double v = feats ? static_cast<double>(feats[i * nc_ + k]) : 0.0;
        feat_[i * nc_ + k] = v;
        f2 += v * v;
      }
      fnorm2_[i] = f2;
      area_[i] = area[i];
      total_ += area[i];
      for (int k = 0; k < 4; ++k) box_[i * 4 + k] = boxes ? boxes[i * 4 + k] : 0;
      alive_[i] = 1;
    }
    std::vector<std::pair<int32_t, int32_t>> pairs;
    pairs.reserve(static_cast<size_t>(e));
    for (int64_t i = 0; i < e; ++i) {
      int32_t a = static_cast<int32_t>(edges[2 * i]), b = static_cast<int32_t>(edges[2 * i + 1]);
      if (a > b) std::swap(a, b);
      pairs.emplace_back(a, b);
    }
    std::sort(pairs.begin(), pairs.end());
    pairs.erase(std::unique(pairs.begin(), pairs.end()), pairs.end());
    for (const auto& [a, b] : pairs) {
      nbrs_[a].push_back(b);
      nbrs_[b].push_back(a);
      push(a, b);
    }
    next_ = static_cast<int32_t>(n_);
  }

  void run(std::vector<int64_t>& merges, std::vector<double>& sims) {
    while (!heap_.empty()) {
      const GraphEdge top = heap_.top();
      heap_.pop();
      if (!alive_[top.a] || !alive_[top.b]) continue;
      merges.push_back(top.a);
      merges.push_back(top.b);
      sims.push_back(top.sim);
      merge(top.a, top.b);
    }
  }

 private:
  double similarity(int32_t a, int32_t b) const {
    double s = 0.0;
    if (wh_ != 0.0 && hsum_[a] > 0.0 && hsum_[b] > 0.0) {
      const double* ha = hist_.data() + a * nb_;
      const double* hb = hist_.data() + b * nb_;
      const double ia = 1.0 / hsum_[a], ib = 1.0 / hsum_[b];
      double acc = 0.0;
      for (int64_t k = 0; k < nb_; ++k) acc += std::min(ha[k] * ia, hb[k] * ib);
      s += wh_ * acc;
    }
    if (wf_ != 0.0) {
      const double den = fnorm2_[a] * fnorm2_[b];
      if (den > 0.0) {
        const double* fa = feat_.data() + a * nc_;
        const double* fb = feat_.data() + b * nc_;
        double dot = 0.0;
        for (int64_t k = 0; k < nc_; ++k) dot += fa[k] * fb[k];
        s += wf_ * dot / std::sqrt(den);
      }
    }
    if (total_ > 0.0) {
      if (ws_ != 0.0) s += ws_ * (1.0 - (area_[a] + area_[b]) / total_);
      if (wb_ != 0.0) {
        const int64_t* ba = box_.data() + a * 4;
        const int64_t* bb = box_.data() + b * 4;
        const double bw = static_cast<double>(std::max(ba[2], bb[2]) - std::min(ba[0], bb[0]));
        const double bh = static_cast<double>(std::max(ba[3], bb[3]) - std::min(ba[1], bb[1]));
        s += wb_ * (1.0 - (bw * bh - area_[a] - area_[b]) / total_);
      }
    }
    return s;
  }

  void push(int32_t a, int32_t b) {
    if (a > b) std::swap(a, b);
    heap_.push({similarity(a, b), a, b});
  }

  void merge(int32_t a, int32_t b) {
    const int32_t c = next_++;
    for (int64_t k = 0; k < nb_; ++k) hist_[c * nb_ + k] = hist_[a * nb_ + k] + hist_[b * nb_ + k];
    hsum_[c] = hsum_[a] + hsum_[b];
    double f2 = 0.0;
    for (int64_t k = 0; k < nc_; ++k) {
      const double v = feat_[a * nc_ + k] + feat_[b * nc_ + k];
      feat_[c * nc_ + k] = v;
      f2 += v * v;
    }
    fnorm2_[c] = f2;
    area_[c] = area_[a] + area_[b];
    box_[c * 4 + 0] = std::min(box_[a * 4 + 0], box_[b * 4 + 0]);
    box_[c * 4 + 1] = std::min(box_[a * 4 + 1], box_[b * 4 + 1]);
    box_[c * 4 + 2] = std::max(box_[a * 4 + 2], box_[b * 4 + 2]);
    box_[c * 4 + 3] = std::max(box_[a * 4 + 3], box_[b * 4 + 3]);
    alive_[a] = alive_[b] = 0;
    alive_[c] = 1;
    // Neighbours of c: those of a and b (deduplicated with a stamp); each of them
    // replaces a and b by c in its own list (keeping one entry).
    ++tick_;
    std::vector<int32_t>& nc = nbrs_[c];
    for (int32_t side : {a, b}) {
      for (int32_t q : nbrs_[side]) {
        if (q == a || q == b || !alive_[q] || stamp_[q] == tick_) continue;
        stamp_[q] = tick_;
        nc.push_back(q);
      }
      nbrs_[side].clear();
      nbrs_[side].shrink_to_fit();
    }
    for (int32_t q : nc) {
      std::vector<int32_t>& nq = nbrs_[q];
      size_t j = 0;
      for (size_t i = 0; i < nq.size(); ++i) {
        if (nq[i] == a || nq[i] == b) continue;
        nq[j++] = nq[i];
      }
      nq.resize(j);
      nq.push_back(c);
      push(q, c);
    }
  }

  int64_t n_, nb_, nc_;
  double wh_, wf_, ws_, wb_, total_ = 0.0;
  int32_t next_ = 0;
  uint32_t tick_ = 0;
  std::vector<double> hist_, hsum_, feat_, fnorm2_, area_;
  std::vector<int64_t> box_;
  std::vector<uint8_t> alive_;
  std::vector<uint32_t> stamp_;
  std::vector<std::vector<int32_t>> nbrs_;
  std::priority_queue<GraphEdge, std::vector<GraphEdge>, GraphEdgeLess> heap_;
};

}  // namespace

std::tuple<at::Tensor, at::Tensor> merge_graph_cpu(const at::Tensor& hist_in,
                                                   const std::optional<at::Tensor>& feats_in,
                                                   const at::Tensor& area_in,
                                                   const std::optional<at::Tensor>& boxes_in,
                                                   const at::Tensor& edges_in, double w_hist,
                                                   double w_feat, double w_size, double w_fill) {
  UNSAM_CHECK_DIM(hist_in, 2, "merge_graph: hist");
  UNSAM_CHECK_DTYPE(hist_in, at::kFloat, "merge_graph: hist");
  const int64_t n = hist_in.size(0);
  TORCH_CHECK(n < (int64_t{1} << 29), "merge_graph: N should be < 2^29, got ", n);
  UNSAM_CHECK_DIM(area_in, 1, "merge_graph: area");
  UNSAM_CHECK_DTYPE(area_in, at::kDouble, "merge_graph: area");
  TORCH_CHECK(area_in.size(0) == n, "merge_graph: area should have shape [", n, "], got ",
              shape_str(area_in));
  UNSAM_CHECK_DIM(edges_in, 2, "merge_graph: edges");
  UNSAM_CHECK_DTYPE(edges_in, at::kLong, "merge_graph: edges");
  TORCH_CHECK(edges_in.size(1) == 2, "merge_graph: edges should have shape [E, 2], got ",
              shape_str(edges_in));
  for (double wgt : {w_hist, w_feat, w_size, w_fill}) {
    TORCH_CHECK(std::isfinite(wgt), "merge_graph: weights should be finite, got ", wgt);
  }
  at::Tensor feats, boxes;
  if (feats_in.has_value()) {
    feats = feats_in->contiguous();
    UNSAM_CHECK_DIM(feats, 2, "merge_graph: feats");
    UNSAM_CHECK_DTYPE(feats, at::kFloat, "merge_graph: feats");
    TORCH_CHECK(feats.size(0) == n, "merge_graph: feats should have N = ", n, " rows, got ",
                shape_str(feats));
  }
  TORCH_CHECK(w_feat == 0.0 || feats.defined(), "merge_graph: w_feat != 0 needs feats");
  if (boxes_in.has_value()) {
    boxes = boxes_in->contiguous();
    UNSAM_CHECK_DIM(boxes, 2, "merge_graph: boxes");
    UNSAM_CHECK_DTYPE(boxes, at::kLong, "merge_graph: boxes");
    TORCH_CHECK(boxes.size(0) == n && boxes.size(1) == 4, "merge_graph: boxes should have shape [",
                n, ", 4], got ", shape_str(boxes));
  }
  TORCH_CHECK(w_fill == 0.0 || boxes.defined(), "merge_graph: w_fill != 0 needs boxes");
  check_finite(hist_in, "merge_graph", "hist");
  TORCH_CHECK_VALUE(hist_in.numel() == 0 || hist_in.min().item<float>() >= 0.0f, "merge_graph: hist should be >= 0");
  if (feats.defined()) check_finite(feats, "merge_graph", "feats");
  if (boxes.defined() && boxes.numel()) {
    // Box areas are products of coordinates: keep them far from int64's range.
    const auto b = boxes.view({-1, 4});
    TORCH_CHECK_VALUE(b.min().item<int64_t>() >= 0 && b.max().item<int64_t>() < (int64_t{1} << 31),
                      "merge_graph: boxes should have coordinates in [0, 2^31)");
    TORCH_CHECK_VALUE(b.select(1, 2).ge(b.select(1, 0)).all().item<bool>() && b.select(1, 3).ge(b.select(1, 1)).all().item<bool>(),
                      "merge_graph: boxes should be (x0, y0, x1, y1) with x1 >= x0 and y1 >= y0");
  }
  auto hist = hist_in.contiguous();
  auto area = area_in.contiguous();
  auto edges = edges_in.contiguous();
  const int64_t e = edges.size(0);
  const int64_t* ep = edges.data_ptr<int64_t>();
  for (int64_t i = 0; i < 2 * e; ++i) {
    TORCH_CHECK(ep[i] >= 0 && ep[i] < n, "merge_graph: edges should index nodes 0..", n - 1,
                ", got ", ep[i]);
  }
  for (int64_t i = 0; i < e; ++i) {
    TORCH_CHECK(ep[2 * i] != ep[2 * i + 1], "merge_graph: edges[", i, "] is a self-loop (",
                ep[2 * i], ", ", ep[2 * i], ")");
  }
  const double* ap = area.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(std::isfinite(ap[i]) && ap[i] >= 0.0, "merge_graph: area[", i,
                "] should be finite and >= 0, got ", ap[i]);
  }
  std::vector<int64_t> merges;
  std::vector<double> sims;
  if (n > 0) {
    GraphMerger gm(n, hist.size(1), feats.defined() ? feats.size(1) : 0, w_hist, w_feat, w_size,
                   w_fill);
    gm.init(hist.data_ptr<float>(), feats.defined() ? feats.data_ptr<float>() : nullptr, ap,
            boxes.defined() ? boxes.data_ptr<int64_t>() : nullptr, ep, e);
    gm.run(merges, sims);
  }
  const int64_t m = static_cast<int64_t>(sims.size());
  auto out_m = at::empty({m, 2}, edges_in.options());
  auto out_s = at::empty({m}, area_in.options());
  std::copy(merges.begin(), merges.end(), out_m.data_ptr<int64_t>());
  std::copy(sims.begin(), sims.end(), out_s.data_ptr<double>());
  return {out_m, out_s};
}

TORCH_LIBRARY_IMPL(unsam, CPU, m) {
  m.impl("graph_segment", TORCH_FN(graph_segment_cpu));
  m.impl("merge_graph", TORCH_FN(merge_graph_cpu));
}

}  // namespace unsam::ops
