// CPU backend of the mask stage's ops (ops/maskops.h): overlaps on cells, NMS,
// containment parents and COCO RLE with the upscaling folded in.
//
// Every op gives exactly what the Python stage computed (unsam/masks.py keeps it
// as the reference): the intersections are exact integers; NMS and parents use
// the same float64 expressions and the same orders; the RLE counts are those
// pycocotools encodes for the full-size mask, and its string, area and bbox follow
// pycocotools' rleToString, rleArea and rleToBbox.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "ops/maskops.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define UNSAM_X86 1
#endif

namespace unsam::ops {
namespace {

// A mask row's edges into a row of differences: +key where a run of set bytes
// starts, -key where it ends (at n when it reaches the row's end; delta holds n + 1
// entries). The prefix sums of the differences add key under every set byte (in
// wrapping uint64 arithmetic, exactly), at the cost of the edges, not the pixels.
inline void add_edge(uint64_t* delta, int64_t x, uint8_t v, uint64_t key) { delta[x] += v ? key : 0ull - key; }

// Bytes 1..n-1 (byte 0 has no byte before it: add_edges does it).
void add_edges_generic(uint64_t* __restrict delta, const uint8_t* __restrict row, int64_t n, uint64_t key) {
  int64_t x = 1;
  for (; x + 8 <= n; x += 8) {  // skip 8-byte words equal to the word one byte earlier
    uint64_t u, v;
    std::memcpy(&u, row + x - 1, 8);
    std::memcpy(&v, row + x, 8);
    if (u == v) continue;
    for (int64_t t = x; t < x + 8; ++t)
      if (row[t] != row[t - 1]) add_edge(delta, t, row[t], key);
  }
  for (; x < n; ++x)
    if (row[x] != row[x - 1]) add_edge(delta, x, row[x], key);
}

#ifdef UNSAM_X86
bool have_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}

__attribute__((target("avx2,bmi"))) void add_edges_avx2(uint64_t* __restrict delta, const uint8_t* __restrict row,
                                                        int64_t n, uint64_t key) {
  if (n < 33) return add_edges_generic(delta, row, n, key);
  for (int64_t x = 1; x < n; x += 32) {
    const int64_t at = std::min(x, n - 32);  // the last block overlaps the one before
    const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + at - 1));
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + at));
    uint32_t diff = ~static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(u, v)));
    if (at < x) diff &= ~0u << (x - at);  // bytes the block before already did
    while (diff) {
      const int64_t t = at + __builtin_ctz(diff);
      add_edge(delta, t, row[t], key);
      diff &= diff - 1;
    }
  }
}
#endif

void add_edges(uint64_t* delta, const uint8_t* row, int64_t n, uint64_t key) {
  if (n <= 0) return;  // an empty box
  if (row[0]) delta[0] += key;
  if (row[n - 1]) delta[n] -= key;
#ifdef UNSAM_X86
  if (have_avx2()) return add_edges_avx2(delta, row, n, key);
#endif
  add_edges_generic(delta, row, n, key);
}

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

struct Box {
  int64_t x0, y0, x1, y1;
};

std::vector<Box> read_boxes(const at::Tensor& boxes) {
  auto b = boxes.contiguous();
  const int64_t* p = b.data_ptr<int64_t>();
  std::vector<Box> out(boxes.size(0));
  for (size_t k = 0; k < out.size(); ++k) out[k] = {p[4 * k], p[4 * k + 1], p[4 * k + 2], p[4 * k + 3]};
  return out;
}

// Open-addressing map from a pixel's cover code to its cell id.
class CodeTable {
 public:
  explicit CodeTable(size_t cap = 1 << 12) { reset(cap); }
  // The id of code (a new one, the next free id, when absent).
  int32_t id(uint64_t code) {
    size_t i = slot(code);
    if (used_[i]) return ids_[i];
    if (2 * (count_ + 1) > keys_.size()) {
      grow();
      i = slot(code);
    }
    used_[i] = 1;
    keys_[i] = code;
    ids_[i] = static_cast<int32_t>(count_++);
    return ids_[i];
  }

 private:
  void reset(size_t cap) {
    keys_.assign(cap, 0);
    ids_.assign(cap, 0);
    used_.assign(cap, 0);
    count_ = 0;
  }
  size_t slot(uint64_t code) const {
    const size_t mask = keys_.size() - 1;
    size_t i = splitmix64(code) & mask;
    while (used_[i] && keys_[i] != code) i = (i + 1) & mask;
    return i;
  }
  void grow() {
    std::vector<uint64_t> k = std::move(keys_);
    std::vector<int32_t> v = std::move(ids_);
    std::vector<uint8_t> u = std::move(used_);
    const size_t n = count_;
    reset(k.size() * 2);
    for (size_t i = 0; i < k.size(); ++i) {
      if (!u[i]) continue;
      const size_t j = slot(k[i]);
      used_[j] = 1;
      keys_[j] = k[i];
      ids_[j] = v[i];
    }
    count_ = n;
  }
  std::vector<uint64_t> keys_;
  std::vector<int32_t> ids_;
  std::vector<uint8_t> used_;
  size_t count_ = 0;
};

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> mask_overlaps_cpu(const at::Tensor& boxes, at::TensorList crops,
                                                                 int64_t height, int64_t width) {
  check_mask_args(boxes, crops, height, width, "mask_overlaps");
  const int64_t k = boxes.size(0);
  if (k == 0) {
    return {at::zeros({1}, boxes.options()), at::empty({0}, boxes.options().dtype(at::kInt)),
            at::empty({0}, boxes.options())};
  }
  const std::vector<Box> bx = read_boxes(boxes);
  std::vector<const uint8_t*> cp(k);
  std::vector<uint64_t> key(k);
  for (int64_t i = 0; i < k; ++i) {
    cp[i] = reinterpret_cast<const uint8_t*>(crops[i].data_ptr<bool>());
    key[i] = splitmix64(0x5EEDull + static_cast<uint64_t>(i));
  }
  // 1. Cover code of every pixel: the sum of the keys of the masks holding it
  //    (two different cover sets collide with probability ~ cells^2 / 2^64), as
  //    prefix sums of the masks' row edges. Bands of image rows in parallel: no two
  //    threads write the same row.
  std::vector<uint64_t> code(static_cast<size_t>(height * width), 0);
  at::parallel_for(0, height, 16, [&](int64_t r0, int64_t r1) {
    std::vector<uint64_t> delta(static_cast<size_t>((r1 - r0) * (width + 1)), 0);
    for (int64_t i = 0; i < k; ++i) {
      const Box& b = bx[i];
      const int64_t ya = std::max(b.y0, r0), yb = std::min(b.y1, r1);
      const int64_t bw = b.x1 - b.x0;
      for (int64_t y = ya; y < yb; ++y)
        add_edges(delta.data() + (y - r0) * (width + 1) + b.x0, cp[i] + (y - b.y0) * bw, bw, key[i]);
    }
    for (int64_t y = r0; y < r1; ++y) {
      uint64_t acc = 0;
      const uint64_t* d = delta.data() + (y - r0) * (width + 1);
      uint64_t* out = code.data() + y * width;
      for (int64_t x = 0; x < width; ++x) out[x] = acc += d[x];
    }
  });
  // 2. Cells: ids in raster order of their first pixel (the representative).
  CodeTable table;
  std::vector<int64_t> rep;  // representative pixel of each cell
  std::vector<int64_t> cell_area;
  uint64_t last_code = 0;
  int32_t last_id = -1;
  for (int64_t p = 0; p < height * width; ++p) {
    // Neighbouring pixels mostly share a cell: skip the table for a repeated code.
    const int32_t c = (last_id >= 0 && code[p] == last_code) ? last_id : table.id(code[p]);
    last_code = code[p];
    last_id = c;
    if (c == static_cast<int32_t>(rep.size())) {
      rep.push_back(p);
      cell_area.push_back(0);
    }
    ++cell_area[c];
  }
  const int64_t ncell = static_cast<int64_t>(rep.size());
  // 3. The cells of each mask: those whose representative it covers (a mask is a
  //    union of cells). Cells with a representative in the box's rows form one id
  //    range; the crop reads are independent loads (no branch on them), so they
  //    overlap in flight instead of waiting on each other's cache misses.
  std::vector<int32_t> rep_x(ncell), rep_y(ncell);
  for (int64_t c = 0; c < ncell; ++c) {
    rep_y[c] = static_cast<int32_t>(rep[c] / width);
    rep_x[c] = static_cast<int32_t>(rep[c] % width);
  }
  std::vector<std::vector<int32_t>> cells_of(k);
  at::parallel_for(0, k, 64, [&](int64_t i0, int64_t i1) {
    std::vector<int32_t> inbox;
    for (int64_t i = i0; i < i1; ++i) {
      const Box& b = bx[i];
      const int32_t lo = static_cast<int32_t>(std::lower_bound(rep.begin(), rep.end(), b.y0 * width) - rep.begin());
      const int32_t hi = static_cast<int32_t>(std::lower_bound(rep.begin(), rep.end(), b.y1 * width) - rep.begin());
      inbox.resize(hi - lo);
      int32_t n = 0;
      for (int32_t c = lo; c < hi; ++c) {
        inbox[n] = c;
        n += rep_x[c] >= b.x0 && rep_x[c] < b.x1;
      }
      const int64_t bw = b.x1 - b.x0;
      auto& out = cells_of[i];
      out.resize(n);
      int32_t m = 0;
      for (int32_t t = 0; t < n; ++t) {
        const int32_t c = inbox[t];
        out[m] = c;
        m += cp[i][(rep_y[c] - b.y0) * bw + (rep_x[c] - b.x0)];
      }
      out.resize(m);
    }
  });
  // 4. The masks of each cell, then each mask's row: the sum of cell areas over the
  //    cells it shares with each other mask, kept sparse (most pairs do not overlap,
  //    and a dense K x K matrix is 170 MB at K = 4500).
  std::vector<int64_t> start(ncell + 1, 0);
  for (const auto& cs : cells_of)
    for (int32_t c : cs) ++start[c + 1];
  std::partial_sum(start.begin(), start.end(), start.begin());
  std::vector<int32_t> masks_of(start[ncell]);
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < k; ++i)
      for (int32_t c : cells_of[i]) masks_of[fill[c]++] = static_cast<int32_t>(i);
  }
  // The upper triangle (columns >= the row; the masks of a cell are in increasing
  // order, so each cell's list is entered at the row's own index): the lower one
  // is its mirror, and every reader (mask_nms, mask_dense) takes either.
  std::vector<std::vector<int32_t>> row_idx(k);
  std::vector<std::vector<int64_t>> row_val(k);
  at::parallel_for(0, k, 16, [&](int64_t i0, int64_t i1) {
    // A dense row (int32: areas at the working resolution are < 2^31; small enough
    // to stay in the L1 cache), filled without branches, then read off in index order.
    std::vector<int32_t> row(k, 0);
    for (int64_t i = i0; i < i1; ++i) {
      for (int32_t c : cells_of[i]) {
        const int32_t a = static_cast<int32_t>(cell_area[c]);
        const int32_t* first = masks_of.data() + start[c];
        const int32_t* last = masks_of.data() + start[c + 1];
        for (const int32_t* m = std::lower_bound(first, last, static_cast<int32_t>(i)); m != last; ++m) row[*m] += a;
      }
      auto& idx = row_idx[i];
      auto& val = row_val[i];
      for (int64_t j = i; j < k; ++j) {
        if (row[j]) {
          idx.push_back(static_cast<int32_t>(j));
          val.push_back(row[j]);
          row[j] = 0;
        }
      }
    }
  });
  auto indptr = at::empty({k + 1}, boxes.options());
  int64_t* ip = indptr.data_ptr<int64_t>();
  ip[0] = 0;
  for (int64_t i = 0; i < k; ++i) ip[i + 1] = ip[i] + static_cast<int64_t>(row_idx[i].size());
  auto indices = at::empty({ip[k]}, boxes.options().dtype(at::kInt));
  auto values = at::empty({ip[k]}, boxes.options());
  int32_t* xi = indices.data_ptr<int32_t>();
  int64_t* xv = values.data_ptr<int64_t>();
  at::parallel_for(0, k, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      std::copy(row_idx[i].begin(), row_idx[i].end(), xi + ip[i]);
      std::copy(row_val[i].begin(), row_val[i].end(), xv + ip[i]);
    }
  });
  return {indptr, indices, values};
}

namespace {

// A CSR matrix's arrays, checked: int64 indptr [K + 1], int32 indices, int64 values.
struct Csr {
  at::Tensor indptr, indices, values;
  const int64_t* ip;
  const int32_t* xi;
  const int64_t* xv;
  int64_t k;
};

Csr read_csr(const at::Tensor& indptr_in, const at::Tensor& indices_in, const at::Tensor& values_in, const char* op) {
  TORCH_CHECK(indptr_in.dim() == 1 && indptr_in.size(0) >= 1 && indptr_in.scalar_type() == at::kLong, op,
              ": indptr should be int64 [K + 1], got ", indptr_in.scalar_type(), " ", shape_str(indptr_in));
  TORCH_CHECK(indices_in.scalar_type() == at::kInt && values_in.scalar_type() == at::kLong &&
                  indices_in.dim() == 1 && values_in.dim() == 1 && indices_in.size(0) == values_in.size(0),
              op, ": indices (int32) and values (int64) should be 1-D of one length");
  Csr m{indptr_in.contiguous(), indices_in.contiguous(), values_in.contiguous(), nullptr, nullptr, nullptr,
        indptr_in.size(0) - 1};
  m.ip = m.indptr.data_ptr<int64_t>();
  m.xi = m.indices.data_ptr<int32_t>();
  m.xv = m.values.data_ptr<int64_t>();
  check_int32_count(m.k, op, "K (masks)");
  TORCH_CHECK(m.ip[0] == 0 && m.ip[m.k] == m.indices.size(0), op, ": indptr does not fit indices");
  for (int64_t i = 0; i < m.k; ++i) TORCH_CHECK(m.ip[i] <= m.ip[i + 1], op, ": indptr should not decrease");
  for (int64_t t = 0; t < m.ip[m.k]; ++t)
    TORCH_CHECK(m.xi[t] >= 0 && m.xi[t] < m.k, op, ": column ", m.xi[t], " is outside [0, ", m.k, ")");
  return m;
}

}  // namespace

at::Tensor mask_dense_cpu(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
                          const at::Tensor& rows_in) {
  const Csr m = read_csr(indptr, indices, values, "mask_dense");
  TORCH_CHECK(rows_in.dim() == 1 && rows_in.scalar_type() == at::kLong, "mask_dense: rows should be int64 [R], got ",
              rows_in.scalar_type(), " ", shape_str(rows_in));
  auto rows = rows_in.contiguous();
  const int64_t* r = rows.data_ptr<int64_t>();
  const int64_t n = rows.size(0);
  std::vector<int64_t> at_row(m.k, -1);  // position of each kept matrix row in the output
  for (int64_t a = 0; a < n; ++a) {
    TORCH_CHECK(r[a] >= 0 && r[a] < m.k, "mask_dense: row ", r[a], " is outside [0, ", m.k, ")");
    TORCH_CHECK(at_row[r[a]] < 0, "mask_dense: row ", r[a], " is asked twice");
    at_row[r[a]] = a;
  }
  auto out = at::zeros({n, n}, indptr.options());
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t a = 0; a < n; ++a) {
    const int64_t i = r[a];
    for (int64_t t = m.ip[i]; t < m.ip[i + 1]; ++t) {
      const int64_t b = at_row[m.xi[t]];
      if (b >= 0) o[a * n + b] = o[b * n + a] = m.xv[t];  // either triangle, or both
    }
  }
  return out;
}

at::Tensor mask_nms_cpu(const at::Tensor& indptr_in, const at::Tensor& indices_in, const at::Tensor& values_in,
                        const at::Tensor& scores_in, double iou, const std::optional<at::Tensor>& protect_in) {
  const Csr m = read_csr(indptr_in, indices_in, values_in, "mask_nms");
  const int64_t k = m.k;
  TORCH_CHECK(scores_in.dim() == 1 && scores_in.size(0) == k, "mask_nms: scores should be [", k, "], got ",
              shape_str(scores_in));
  check_nms_args(m.values, scores_in, iou);
  auto scores = scores_in.to(at::kDouble).contiguous();
  const double* s = scores.data_ptr<double>();
  std::vector<uint8_t> prot(k, 0);
  if (protect_in.has_value()) {
    TORCH_CHECK(protect_in->dim() == 1 && protect_in->size(0) == k, "mask_nms: protect should be [", k, "], got ",
                shape_str(*protect_in));
    auto pr = protect_in->to(at::kBool).contiguous();
    const bool* pp = pr.data_ptr<bool>();
    for (int64_t i = 0; i < k; ++i) prot[i] = pp[i];
  }
  std::vector<double> area(k, 0.0);  // the diagonal
  for (int64_t i = 0; i < k; ++i)
    for (int64_t t = m.ip[i]; t < m.ip[i + 1]; ++t)
      if (m.xi[t] == i) area[i] = static_cast<double>(m.xv[t]);
  // The pairs above the threshold, each stored entry read both ways (a full matrix
  // or one triangle), as lists per mask.
  std::vector<int64_t> hit_start(k + 1, 0);
  std::vector<std::pair<int32_t, int32_t>> hits;
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t t = m.ip[i]; t < m.ip[i + 1]; ++t) {
      const int64_t j = m.xi[t];
      const double b = static_cast<double>(m.xv[t]);
      if (j != i && b / std::max(area[i] + area[j] - b, 1.0) > iou) {
        hits.emplace_back(static_cast<int32_t>(i), static_cast<int32_t>(j));
        ++hit_start[i + 1];
        ++hit_start[j + 1];
      }
    }
  }
  std::partial_sum(hit_start.begin(), hit_start.end(), hit_start.begin());
  std::vector<int32_t> hit(hit_start[k]);
  {
    std::vector<int64_t> fill(hit_start.begin(), hit_start.end() - 1);
    for (const auto& [i, j] : hits) {
      hit[fill[i]++] = j;
      hit[fill[j]++] = i;
    }
  }
  std::vector<int64_t> order(k);
  std::iota(order.begin(), order.end(), 0);
  // Protected first, then score, then area (larger first), then index.
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    if (prot[a] != prot[b]) return prot[a] > prot[b];
    if (s[a] != s[b]) return s[a] > s[b];
    if (area[a] != area[b]) return area[a] > area[b];
    return a < b;
  });
  std::vector<uint8_t> suppressed(k, 0);
  std::vector<int64_t> kept;
  for (int64_t i : order) {
    if (suppressed[i] && !prot[i]) continue;
    kept.push_back(i);
    for (int64_t t = hit_start[i]; t < hit_start[i + 1]; ++t) suppressed[hit[t]] = 1;
  }
  auto out = at::empty({static_cast<int64_t>(kept.size())}, m.indptr.options());
  std::copy(kept.begin(), kept.end(), out.data_ptr<int64_t>());
  return out;
}

at::Tensor mask_parents_cpu(const at::Tensor& inter_in, double contain) {
  check_parents_args(inter_in, contain);
  const int64_t k = inter_in.size(0);
  auto inter = inter_in.contiguous();
  const int64_t* m = inter.data_ptr<int64_t>();
  std::vector<double> area(k);
  for (int64_t i = 0; i < k; ++i) area[i] = static_cast<double>(m[i * k + i]);
  auto out = at::empty({k}, inter.options());
  int64_t* par = out.data_ptr<int64_t>();
  at::parallel_for(0, k, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const double need = contain * area[i];
      int64_t best = -1;
      const int64_t* row = m + i * k;
      for (int64_t j = 0; j < k; ++j) {
        // Smallest strictly larger container, lowest index among equal areas.
        if (area[j] > area[i] && static_cast<double>(row[j]) >= need && (best < 0 || area[j] < area[best])) best = j;
      }
      par[i] = best;
    }
  });
  return out;
}

namespace {

// pycocotools' rleToString: counts as deltas (after the first two) in 5-bit groups.
void append_rle_string(const std::vector<int64_t>& cnts, std::vector<uint8_t>& out) {
  for (size_t i = 0; i < cnts.size(); ++i) {
    int64_t x = cnts[i];
    if (i > 2) x -= cnts[i - 2];
    bool more = true;
    while (more) {
      int64_t c = x & 0x1f;
      x >>= 5;  // arithmetic shift, as the C code's long
      more = (c & 0x10) ? x != -1 : x != 0;
      if (more) c |= 0x20;
      out.push_back(static_cast<uint8_t>(c + 48));
    }
  }
}

// Where a crop's values change down its columns, read row by row (contiguous, 32
// bytes at a time where AVX2 is there): every (column, row) with row >= 1 and
// crop[row][column] != crop[row - 1][column], in row order, appended to cols / rows.
void row_changes_generic(const uint8_t* crop, int64_t ch, int64_t cw, std::vector<int32_t>& cols,
                         std::vector<int32_t>& rows) {
  for (int64_t r = 1; r < ch; ++r) {
    const uint8_t* a = crop + (r - 1) * cw;
    const uint8_t* b = crop + r * cw;
    int64_t x = 0;
    for (; x + 8 <= cw; x += 8) {  // skip unchanged 8-byte words
      uint64_t u, v;
      std::memcpy(&u, a + x, 8);
      std::memcpy(&v, b + x, 8);
      if (u == v) continue;
      for (int64_t t = x; t < x + 8; ++t)
        if (a[t] != b[t]) {
          cols.push_back(static_cast<int32_t>(t));
          rows.push_back(static_cast<int32_t>(r));
        }
    }
    for (; x < cw; ++x)
      if (a[x] != b[x]) {
        cols.push_back(static_cast<int32_t>(x));
        rows.push_back(static_cast<int32_t>(r));
      }
  }
}

#ifdef UNSAM_X86
__attribute__((target("avx2,bmi"))) void row_changes_avx2(const uint8_t* crop, int64_t ch, int64_t cw,
                                                          std::vector<int32_t>& cols, std::vector<int32_t>& rows) {
  if (cw < 32) return row_changes_generic(crop, ch, cw, cols, rows);
  for (int64_t r = 1; r < ch; ++r) {
    const uint8_t* a = crop + (r - 1) * cw;
    const uint8_t* b = crop + r * cw;
    for (int64_t x = 0; x < cw; x += 32) {
      const int64_t at = std::min(x, cw - 32);  // the last block overlaps the one before
      const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + at));
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + at));
      uint32_t diff = ~static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(u, v)));
      if (at < x) diff &= ~0u << (x - at);  // columns the block before already reported
      while (diff) {
        cols.push_back(static_cast<int32_t>(at + __builtin_ctz(diff)));
        rows.push_back(static_cast<int32_t>(r));
        diff &= diff - 1;
      }
    }
  }
}
#endif

void row_changes(const uint8_t* crop, int64_t ch, int64_t cw, std::vector<int32_t>& cols, std::vector<int32_t>& rows) {
  cols.clear();
  rows.clear();
#ifdef UNSAM_X86
  if (have_avx2()) return row_changes_avx2(crop, ch, cw, cols, rows);
#endif
  row_changes_generic(crop, ch, cw, cols, rows);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mask_rle_cpu(const at::Tensor& boxes,
                                                                        at::TensorList crops, int64_t work_h,
                                                                        int64_t work_w, int64_t height,
                                                                        int64_t width) {
  check_mask_args(boxes, crops, work_h, work_w, "mask_rle");
  TORCH_CHECK_VALUE(height <= (int64_t{1} << 31) / std::max<int64_t>(width, 1), "mask_rle: height * width should be < 2^31, got ",
                    height, " x ", width);
  TORCH_CHECK(height >= work_h && width >= work_w, "mask_rle: the image (", height, " x ", width,
              ") should be at least the working resolution (", work_h, " x ", work_w, ")");
  const int64_t k = boxes.size(0);
  const std::vector<Box> bx = read_boxes(boxes);
  // The nearest-neighbour map of upscale_crop (unsam/masks.py), in its float64 arithmetic.
  const double sx = static_cast<double>(width) / static_cast<double>(work_w);
  const double sy = static_cast<double>(height) / static_cast<double>(work_h);
  auto edge = [](int64_t v, double s, int64_t lo, int64_t hi) {
    return std::min(hi, std::max(lo, static_cast<int64_t>(std::ceil(static_cast<double>(v) * s - 0.5))));
  };
  std::vector<std::vector<uint8_t>> strs(k);
  std::vector<int64_t> areas(k);
  std::vector<double> bbs(4 * k);
  at::parallel_for(0, k, 8, [&](int64_t i0, int64_t i1) {
    std::vector<int64_t> cnts, row_first;
    std::vector<int32_t> ch_cols, ch_rows, col_start, next, by_col;
    for (int64_t i = i0; i < i1; ++i) {
      const Box& b = bx[i];
      const int64_t ch = b.y1 - b.y0, cw = b.x1 - b.x0;
      const int64_t total = height * width;
      if (ch == 0 || cw == 0) {  // an empty mask
        areas[i] = 0;
        cnts.assign(1, total);  // pycocotools' bbox of it: all zeros (bbs starts at 0)
        strs[i].clear();
        append_rle_string(cnts, strs[i]);
        continue;
      }
      const uint8_t* crop = reinterpret_cast<const uint8_t*>(crops[i].data_ptr<bool>());
      const int64_t fx0 = edge(b.x0, sx, 0, width), fx1 = std::max(fx0, edge(b.x1, sx, 0, width));
      const int64_t fy0 = edge(b.y0, sy, 0, height), fy1 = std::max(fy0, edge(b.y1, sy, 0, height));
      // First full row of each crop row (rows of the full box map to nondecreasing
      // crop rows, consecutive ones differing by at most 1 since the full image is
      // at least the working resolution).
      row_first.assign(ch + 1, fy1);
      for (int64_t y = fy1 - 1; y >= fy0; --y) {
        const int64_t r = std::clamp<int64_t>(static_cast<int64_t>(std::floor((static_cast<double>(y) + 0.5) / sy)) - b.y0, 0, ch - 1);
        row_first[r] = y;
      }
      cnts.clear();
      int64_t last = 0;  // position where the current run started
      uint8_t cur = 0;   // value of the current run (pixel 0 comes after a virtual 0)
      auto to = [&](int64_t pos, uint8_t v) {
        if (v != cur) {
          cnts.push_back(pos - last);
          last = pos;
          cur = v;
        }
      };
      // The rows where each crop column changes value (row order), bucketed by column.
      row_changes(crop, ch, cw, ch_cols, ch_rows);
      col_start.assign(cw + 1, 0);
      for (int32_t c : ch_cols) ++col_start[c + 1];
      std::partial_sum(col_start.begin(), col_start.end(), col_start.begin());
      by_col.resize(ch_rows.size());
      next.assign(col_start.begin(), col_start.end() - 1);  // each column's next free slot
      for (size_t t = 0; t < ch_cols.size(); ++t) by_col[next[ch_cols[t]]++] = ch_rows[t];
      int64_t prev_end = -1;  // position after the last box pixel visited (-1: none yet)
      // The set pixels' extent (pycocotools' rleToBbox gives exactly this box: it reads
      // each run's first and last pixel, and a run that wraps from one column's bottom
      // into the next column's top holds both ends of the rows).
      int64_t xs = width, xe = -1, ys = height, ye = -1;
      for (int64_t X = fx0; X < fx1; ++X) {
        const int64_t c = std::clamp<int64_t>(
            static_cast<int64_t>(std::floor((static_cast<double>(X) + 0.5) / sx)) - b.x0, 0, cw - 1);
        const int64_t col = X * height;
        if (prev_end >= 0 && prev_end < col + fy0) to(prev_end, 0);  // background between the box's columns
        uint8_t v = crop[c];
        to(col + fy0, v);  // the column's top value
        int64_t top = v ? fy0 : fy1, bottom = -1;  // first set row; last row where a set run ends
        for (int32_t t = col_start[c]; t < col_start[c + 1]; ++t) {
          const int32_t r = by_col[t];
          if (row_first[r] >= fy1) continue;
          v = crop[static_cast<int64_t>(r) * cw + c];
          to(col + row_first[r], v);
          if (v)
            top = std::min(top, row_first[r]);
          else
            bottom = row_first[r] - 1;
        }
        if (v) bottom = fy1 - 1;  // the column ends inside a set run
        if (top < fy1) {
          xs = std::min(xs, X);
          xe = X;
          ys = std::min(ys, top);
          ye = std::max(ye, bottom);
        }
        prev_end = col + fy1;
      }
      if (prev_end >= 0 && prev_end < total) to(prev_end, 0);
      cnts.push_back(total - last);  // the last run (never empty: last < total)
      int64_t area = 0;
      for (size_t j = 1; j < cnts.size(); j += 2) area += cnts[j];
      areas[i] = area;
      double* bb = bbs.data() + 4 * i;
      if (xe < 0) {
        bb[0] = bb[1] = bb[2] = bb[3] = 0;
      } else {
        bb[0] = static_cast<double>(xs);
        bb[1] = static_cast<double>(ys);
        bb[2] = static_cast<double>(xe - xs + 1);
        bb[3] = static_cast<double>(ye - ys + 1);
      }
      strs[i].clear();
      append_rle_string(cnts, strs[i]);
    }
  });
  auto offsets = at::empty({k + 1}, boxes.options());
  int64_t* op = offsets.data_ptr<int64_t>();
  op[0] = 0;
  for (int64_t i = 0; i < k; ++i) op[i + 1] = op[i] + static_cast<int64_t>(strs[i].size());
  auto chars = at::empty({op[k]}, boxes.options().dtype(at::kByte));
  uint8_t* cp = chars.data_ptr<uint8_t>();
  for (int64_t i = 0; i < k; ++i) std::copy(strs[i].begin(), strs[i].end(), cp + op[i]);
  auto area_t = at::empty({k}, boxes.options());
  std::copy(areas.begin(), areas.end(), area_t.data_ptr<int64_t>());
  auto bbox_t = at::empty({k, 4}, boxes.options().dtype(at::kDouble));
  std::copy(bbs.begin(), bbs.end(), bbox_t.data_ptr<double>());
  return {chars, offsets, area_t, bbox_t};
}

TORCH_LIBRARY_IMPL(unsam, CPU, m) {
  m.impl("mask_overlaps", TORCH_FN(mask_overlaps_cpu));
  m.impl("mask_nms", TORCH_FN(mask_nms_cpu));
  m.impl("mask_dense", TORCH_FN(mask_dense_cpu));
  m.impl("mask_parents", TORCH_FN(mask_parents_cpu));
  m.impl("mask_rle", TORCH_FN(mask_rle_cpu));
}

}  // namespace unsam::ops
