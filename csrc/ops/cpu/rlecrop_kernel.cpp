// CPU backend of the RLE crop ops (ops/rlecrop.h).
//
// A compressed string is read once per op, count by count (pycocotools' rleFrString),
// and only the set runs are looked at. A run [a, b) of column-major flat positions
// covers source columns a / height .. (b - 1) / height; the crop samples some of them
// (the columns' map as CSR: source column -> output columns) and, in each, the source
// rows [ya, yb) reach the output rows of the rows' map between two CSR pointers. So
// areas cost O(1) per run, the crops cost their set output pixels, and a point query
// costs a merge of the runs with the sorted points.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "ops/rlecrop.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace unsam::ops {
namespace {
namespace rlecrop {

// pycocotools' rleFrString, one count at a time, with its undefined corners made errors.
class CountReader {
 public:
  CountReader(const uint8_t* begin, const uint8_t* end, int64_t mask, const char* op)
      : p_(begin), begin_(begin), end_(end), mask_(mask), op_(op) {}

  bool next(int64_t& count) {
    if (p_ == end_) return false;
    uint64_t x = 0;
    int k = 0;
    bool more = true;
    while (more) {
      TORCH_CHECK_VALUE(p_ < end_, op_, ": mask ", mask_, ": its RLE string ends inside a count");
      const int c = static_cast<int>(*p_) - 48;
      TORCH_CHECK_VALUE(c >= 0 && c < 64, op_, ": mask ", mask_, ": byte ", static_cast<int>(*p_), " at position ",
                  p_ - begin_, " of its RLE string is not an RLE character ('0'..'o')");
      // 12 groups are 60 bits; a 13th would shift past int64 (undefined in the C code).
      TORCH_CHECK_VALUE(k < 12, op_, ": mask ", mask_, ": a count of more than 12 characters at position ",
                  p_ - begin_, " of its RLE string");
      x |= static_cast<uint64_t>(c & 0x1f) << (5 * k);
      more = (c & 0x20) != 0;
      ++p_;
      ++k;
      if (!more && (c & 0x10)) x |= ~uint64_t{0} << (5 * k);  // sign extension
    }
    int64_t v = static_cast<int64_t>(x);
    if (m_ > 2) {  // after the first three, counts are deltas to the count two before
      TORCH_CHECK_VALUE(!__builtin_add_overflow(v, prev2_, &v), op_, ": mask ", mask_, ": count ", m_,
                  " overflows int64");
    }
    TORCH_CHECK_VALUE(v >= 0, op_, ": mask ", mask_, ": count ", m_, " of its RLE is negative (", v, ")");
    prev2_ = prev1_;
    prev1_ = v;
    ++m_;
    count = v;
    return true;
  }

 private:
  const uint8_t* p_;
  const uint8_t* begin_;
  const uint8_t* end_;
  int64_t mask_;
  const char* op_;
  int64_t m_ = 0, prev1_ = 0, prev2_ = 0;
};

// Calls set_run(a, b) for every run of set pixels [a, b) of mask k (column-major flat
// positions), after checking that the counts cover exactly `total` pixels.
template <typename F>
void for_each_set_run(const uint8_t* chars, const int64_t* offsets, int64_t k, int64_t total, const char* op,
                      F&& set_run) {
  CountReader reader(chars + offsets[k], chars + offsets[k + 1], k, op);
  int64_t pos = 0, count = 0;
  bool set = false;
  while (reader.next(count)) {
    TORCH_CHECK_VALUE(count <= total - pos, op, ": mask ", k, ": its RLE counts run past the ", total,
                " pixels of the image");
    if (set && count > 0) set_run(pos, pos + count);
    pos += count;
    set = !set;
  }
  TORCH_CHECK_VALUE(pos == total, op, ": mask ", k, ": its RLE counts cover ", pos, " pixels, not the image's ", total);
}

// A map (output index -> source index or -1) inverted as CSR: the output indices of
// source index s are idx[ptr[s] : ptr[s + 1]], increasing.
struct Inverse {
  std::vector<int64_t> ptr, idx;
  bool increasing = true;  // idx increasing over all sources (a nondecreasing map)
  bool identity = true;    // idx[u] == u: a nondecreasing map, then only -1 (the loader's rows)
  int64_t first = 0, last = -1;  // the sampled source range (last < first: none)

  Inverse(const at::Tensor& map, int64_t size) : ptr(size + 2, 0) {
    const auto m = map.contiguous();
    const int64_t* v = m.data_ptr<int64_t>();
    const int64_t n = m.numel();
    for (int64_t i = 0; i < n; ++i)
      if (v[i] >= 0) ++ptr[v[i] + 2];
    std::partial_sum(ptr.begin(), ptr.end(), ptr.begin());
    idx.resize(ptr[size + 1]);
    for (int64_t i = 0; i < n; ++i)
      if (v[i] >= 0) idx[ptr[v[i] + 1]++] = i;
    ptr.pop_back();  // now ptr[s] .. ptr[s + 1] is source s's range
    for (size_t t = 1; t < idx.size(); ++t) increasing = increasing && idx[t] > idx[t - 1];
    for (size_t t = 0; t < idx.size(); ++t) identity = identity && idx[t] == static_cast<int64_t>(t);
    first = size;
    for (int64_t s = 0; s < size; ++s)
      if (ptr[s + 1] > ptr[s]) {
        first = std::min(first, s);
        last = s;
      }
  }
  int64_t count(int64_t s) const { return ptr[s + 1] - ptr[s]; }
  // min and max of idx[u0 : u1] (u0 < u1)
  void range(int64_t u0, int64_t u1, int64_t& lo, int64_t& hi) const {
    if (increasing) {
      lo = idx[u0];
      hi = idx[u1 - 1];
      return;
    }
    const auto [a, b] = std::minmax_element(idx.begin() + u0, idx.begin() + u1);
    lo = *a;
    hi = *b;
  }
};

struct Args {
  at::Tensor chars, offsets;
  const uint8_t* c;
  const int64_t* o;
  int64_t k;
};

Args read_args(const at::Tensor& chars, const at::Tensor& offsets) {
  Args a{chars.contiguous(), offsets.contiguous(), nullptr, nullptr, offsets.size(0) - 1};
  a.c = a.chars.data_ptr<uint8_t>();
  a.o = a.offsets.data_ptr<int64_t>();
  return a;
}

// A sample's crops are tens of MB (200 masks of 512 x 512 bytes: 52 MB) in memory
// the allocator has just mapped: faulting it in 4 KB pages costs more than decoding
// (about 30 ms for 52 MB here). Transparent huge pages, where the system offers them on
// request, fault it in 2 MB at a time (about 7 ms). Advice only: an error changes nothing.
void advise_huge_pages(void* p, int64_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t a = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(n)) & ~(kHuge - 1);
  if (b > a) (void)madvise(reinterpret_cast<void*>(a), b - a, MADV_HUGEPAGE);
#endif
}

// Parallel over masks; a mask's string is a few hundred bytes, so chunks of a few masks.
constexpr int64_t kGrain = 16;

}  // namespace rlecrop
}  // namespace

at::Tensor rle_crop_area_cpu(const at::Tensor& chars, const at::Tensor& offsets, int64_t height, int64_t width,
                             const at::Tensor& rows, const at::Tensor& cols) {
  check_rle_crop_args(chars, offsets, height, width, rows, cols, "rle_crop_area");
  const auto a = rlecrop::read_args(chars, offsets);
  auto out = at::zeros({a.k}, offsets.options());
  if (a.k == 0) return out;
  const rlecrop::Inverse ri(rows, height), ci(cols, width);
  const int64_t total = height * width, all_rows = ri.ptr[height];
  int64_t* area = out.data_ptr<int64_t>();
  at::parallel_for(0, a.k, rlecrop::kGrain, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      int64_t sum = 0;
      rlecrop::for_each_set_run(a.c, a.o, k, total, "rle_crop_area", [&](int64_t p, int64_t q) {
        const int64_t x0 = p / height, x1 = (q - 1) / height;
        const int64_t y0 = p - x0 * height, y1 = q - x1 * height;  // y1 exclusive, in column x1
        if (x0 == x1) {
          sum += (ri.ptr[y1] - ri.ptr[y0]) * ci.count(x0);
          return;
        }
        // First column from y0 down, whole columns between, last column down to y1.
        sum += (all_rows - ri.ptr[y0]) * ci.count(x0) + all_rows * (ci.ptr[x1] - ci.ptr[x0 + 1]) +
               ri.ptr[y1] * ci.count(x1);
      });
      area[k] = sum;
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> rle_crop_cpu(const at::Tensor& chars, const at::Tensor& offsets, int64_t height,
                                                int64_t width, const at::Tensor& rows, const at::Tensor& cols) {
  check_rle_crop_args(chars, offsets, height, width, rows, cols, "rle_crop");
  const int64_t nr = rows.size(0), nc = cols.size(0);
  const auto a = rlecrop::read_args(chars, offsets);
  TORCH_CHECK_VALUE(nr == 0 || nc == 0 || a.k <= std::numeric_limits<int64_t>::max() / nr / nc, "rle_crop: ", a.k,
              " masks of ", nr, " x ", nc, " pixels have more pixels than int64 can count");
  auto masks = at::empty({a.k, nr, nc}, chars.options().dtype(at::kBool));
  if (masks.numel() >= (int64_t{4} << 20)) rlecrop::advise_huge_pages(masks.data_ptr(), masks.numel());
  auto boxes = at::zeros({a.k, 4}, offsets.options());
  if (a.k == 0 || nr == 0 || nc == 0) {
    // Still read every string: a malformed one is an error whatever the crop.
    masks.zero_();
    if (a.k) rle_crop_area_cpu(chars, offsets, height, width, rows, cols);
    return {masks, boxes};
  }
  const rlecrop::Inverse ri(rows, height), ci(cols, width);
  const int64_t total = height * width;
  uint8_t* out = reinterpret_cast<uint8_t*>(masks.data_ptr<bool>());
  int64_t* bx = boxes.data_ptr<int64_t>();
  at::parallel_for(0, a.k, rlecrop::kGrain, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      uint8_t* m = out + k * nr * nc;
      // Zeroed mask by mask, just before its pixels are set: a crop (512 x 512 bytes) stays
      // in the cache between the two, so memory sees each byte written once.
      std::memset(m, 0, static_cast<size_t>(nr * nc));
      int64_t i_lo = nr, i_hi = -1, j_lo = nc, j_hi = -1;
      // Each piece of a run: source column x, source rows [ya, yb), output rows ri.idx[r0 : r1].
      auto pieces = [&](auto&& piece) {
        rlecrop::for_each_set_run(a.c, a.o, k, total, "rle_crop", [&](int64_t p, int64_t q) {
          const int64_t x0 = p / height, x1 = (q - 1) / height;
          // Only the sampled columns of the run.
          for (int64_t x = std::max(x0, ci.first), xe = std::min(x1, ci.last); x <= xe; ++x) {
            const int64_t c0 = ci.ptr[x], c1 = ci.ptr[x + 1];
            if (c0 == c1) continue;
            const int64_t ya = x == x0 ? p - x0 * height : 0, yb = x == x1 ? q - x1 * height : height;
            const int64_t r0 = ri.ptr[ya], r1 = ri.ptr[yb];
            if (r0 == r1) continue;
            piece(c0, c1, r0, r1);
            j_lo = std::min(j_lo, ci.idx[c0]);  // a column's outputs are increasing
            j_hi = std::max(j_hi, ci.idx[c1 - 1]);
          }
        });
      };
      if (ri.identity) {
        // Output rows r0 .. r1 - 1 are a column's set piece: mark where it starts and where it
        // ends (pieces of one column never overlap, abutting ones cancel), then an XOR down
        // the rows of the box fills them. Row-major and contiguous, where writing the pixels
        // column by column would touch one cache line per pixel.
        pieces([&](int64_t c0, int64_t c1, int64_t r0, int64_t r1) {
          for (int64_t t = c0; t < c1; ++t) {
            const int64_t j = ci.idx[t];
            m[r0 * nc + j] ^= 1;
            if (r1 < nr) m[r1 * nc + j] ^= 1;
          }
          i_lo = std::min(i_lo, r0);
          i_hi = std::max(i_hi, r1 - 1);
        });
        for (int64_t i = i_lo + 1, ie = std::min(i_hi + 1, nr - 1); i <= ie; ++i) {
          const uint8_t* __restrict prev = m + (i - 1) * nc;
          uint8_t* __restrict cur = m + i * nc;
          for (int64_t j = j_lo; j <= j_hi; ++j) cur[j] ^= prev[j];
        }
      } else {
        pieces([&](int64_t c0, int64_t c1, int64_t r0, int64_t r1) {
          for (int64_t t = c0; t < c1; ++t) {
            uint8_t* col = m + ci.idx[t];
            for (int64_t u = r0; u < r1; ++u) col[ri.idx[u] * nc] = 1;
          }
          int64_t lo, hi;
          ri.range(r0, r1, lo, hi);
          i_lo = std::min(i_lo, lo);
          i_hi = std::max(i_hi, hi);
        });
      }
      if (i_hi >= 0) {
        int64_t* b = bx + 4 * k;
        b[0] = j_lo;
        b[1] = i_lo;
        b[2] = j_hi + 1;
        b[3] = i_hi + 1;
      }
    }
  });
  return {masks, boxes};
}

at::Tensor rle_crop_at_cpu(const at::Tensor& chars, const at::Tensor& offsets, int64_t height, int64_t width,
                           const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& points) {
  check_rle_crop_args(chars, offsets, height, width, rows, cols, "rle_crop_at");
  TORCH_CHECK(points.device().is_cpu(), "rle_crop_at: points should be a CPU tensor, got one on ", points.device());
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 2, "rle_crop_at: points should have shape [P, 2], got ",
              shape_str(points));
  TORCH_CHECK(points.scalar_type() == at::kLong, "rle_crop_at: points should be int64, got ",
              points.scalar_type());
  const int64_t np = points.size(0), nr = rows.size(0), nc = cols.size(0);
  const auto pts = points.contiguous();
  const int64_t* pp = pts.data_ptr<int64_t>();
  const auto rw = rows.contiguous(), cl = cols.contiguous();
  const int64_t* rv = rw.data_ptr<int64_t>();
  const int64_t* cv = cl.data_ptr<int64_t>();
  // The points' source pixels as flat column-major positions, sorted (-1: outside the image).
  std::vector<std::pair<int64_t, int64_t>> flat;  // (position, point)
  flat.reserve(np);
  for (int64_t p = 0; p < np; ++p) {
    const int64_t i = pp[2 * p], j = pp[2 * p + 1];
    TORCH_CHECK_VALUE(0 <= i && i < nr && 0 <= j && j < nc, "rle_crop_at: point ", p, " = (", i, ", ", j,
                ") is not inside the ", nr, " x ", nc, " crop");
    if (rv[i] >= 0 && cv[j] >= 0) flat.emplace_back(cv[j] * height + rv[i], p);
  }
  std::sort(flat.begin(), flat.end());
  const auto a = rlecrop::read_args(chars, offsets);
  auto hits = at::zeros({a.k, np}, chars.options().dtype(at::kBool));
  if (a.k == 0) return hits;
  const int64_t total = height * width;
  uint8_t* out = reinterpret_cast<uint8_t*>(hits.data_ptr<bool>());
  at::parallel_for(0, a.k, rlecrop::kGrain, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      uint8_t* h = out + k * np;
      size_t t = 0;
      rlecrop::for_each_set_run(a.c, a.o, k, total, "rle_crop_at", [&](int64_t p, int64_t q) {
        while (t < flat.size() && flat[t].first < p) ++t;
        for (; t < flat.size() && flat[t].first < q; ++t) h[flat[t].second] = 1;
      });
    }
  });
  return hits;
}

TORCH_LIBRARY_IMPL(unsam, CPU, m) {
  m.impl("rle_crop_area", TORCH_FN(rle_crop_area_cpu));
  m.impl("rle_crop", TORCH_FN(rle_crop_cpu));
  m.impl("rle_crop_at", TORCH_FN(rle_crop_at_cpu));
}

}  // namespace unsam::ops
