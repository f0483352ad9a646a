// The permutohedral lattice (Adams, Baek & Davis, Eurographics 2010) as Krähenbühl's
// densecrf builds it (permutohedral.cpp, the SSE build's arithmetic, which is what
// pydensecrf runs on x86): features elevated onto the plane x . 1 = 0 of R^(D+1),
// scaled so that the blur is a Gaussian of standard deviation 1 in feature units;
// each point's enclosing simplex found by rounding to the nearest remainder-0 point
// (half to even, as cvtps2dq) and sorting the remainders; barycentric weights in float.
//
// Built once per image and kernel, then used for every mask (densecrf_kernel.cpp).
// Vertex ids are given in first-seen order (raster order of the points, then the
// simplex corner), which keeps the vertices of neighbouring pixels near each other in
// memory; a splat that visits the points in raster order adds in the library's order.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

namespace unsam::ops::cpu {

template <int D>
struct Lattice {
  int64_t n = 0;  // points
  int64_t m = 0;  // vertices: rows 1..m of a value table; row 0 is "no vertex" and stays 0
  std::vector<int32_t> offset;  // [n][D + 1] each point's corner rows (1-based)
  std::vector<float> weight;    // [n][D + 1] barycentric weights
  std::vector<int32_t> nbr;     // [D + 1][m][2] rows of a vertex's two neighbours per axis (0: none)

  //! alpha of the library's slice ("a magic scaling constant"): 1 / (1 + 2^-D).
  static float alpha() { return 1.0f / (1.0f + std::pow(2.0f, static_cast<float>(-D))); }
};

namespace lattice_detail {

// Open addressing with linear probing, keys of D int32, ids in insertion order.
template <int D>
class KeyTable {
 public:
  explicit KeyTable(int64_t expected) {
    cap_ = 64;
    while (cap_ < 2 * expected) cap_ *= 2;
    slots_.assign(cap_, -1);
    keys_.reserve(static_cast<size_t>(expected) * D);
  }
  int64_t size() const { return static_cast<int64_t>(keys_.size() / D); }
  const int32_t* key(int64_t id) const { return keys_.data() + id * D; }

  int32_t insert(const int32_t* k) {
    if (2 * (size() + 1) > cap_) grow();
    uint64_t h = hash(k) & (cap_ - 1);
    while (true) {
      const int32_t e = slots_[h];
      if (e < 0) {
        const int32_t id = static_cast<int32_t>(size());
        keys_.insert(keys_.end(), k, k + D);
        slots_[h] = id;
        return id;
      }
      if (same(key(e), k)) return e;
      h = (h + 1) & (cap_ - 1);
    }
  }
  int32_t find(const int32_t* k) const {
    uint64_t h = hash(k) & (cap_ - 1);
    while (true) {
      const int32_t e = slots_[h];
      if (e < 0) return -1;
      if (same(key(e), k)) return e;
      h = (h + 1) & (cap_ - 1);
    }
  }

 private:
  static bool same(const int32_t* a, const int32_t* b) {
    for (int i = 0; i < D; ++i)
      if (a[i] != b[i]) return false;
    return true;
  }
  static uint64_t hash(const int32_t* k) {
    uint64_t h = 0;
    for (int i = 0; i < D; ++i) h = (h + static_cast<uint32_t>(k[i])) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 31);
  }
  void grow() {
    cap_ *= 2;
    slots_.assign(cap_, -1);
    for (int64_t id = 0; id < size(); ++id) {
      uint64_t h = hash(key(id)) & (cap_ - 1);
      while (slots_[h] >= 0) h = (h + 1) & (cap_ - 1);
      slots_[h] = static_cast<int32_t>(id);
    }
  }
  uint64_t cap_;
  std::vector<int32_t> slots_;
  std::vector<int32_t> keys_;
};

}  // namespace lattice_detail

// feature(i, f) writes point i's D features (already divided by the kernel's widths).
template <int D, class Feature>
Lattice<D> build_lattice(int64_t n, Feature feature) {
  constexpr int D1 = D + 1;
  Lattice<D> lat;
  lat.n = n;
  lat.offset.resize(n * D1);
  lat.weight.resize(n * D1);
  // Every key is written below: no zero fill (27 MB for a 480 x 480 image's 5-D lattice).
  std::unique_ptr<int32_t[]> keys(new int32_t[n * D1 * D]);
  // The library's constants, in its precisions (double, stored as float).
  const float inv_std_dev = static_cast<float>(std::sqrt(2.0 / 3.0) * D1);
  float scale[D];
  for (int i = 0; i < D; ++i) scale[i] = static_cast<float>(1.0 / std::sqrt(static_cast<double>((i + 2) * (i + 1))) * inv_std_dev);
  int canonical[D1][D1];
  for (int r = 0; r <= D; ++r)
    for (int j = 0; j <= D; ++j) canonical[r][j] = j <= D - r ? r : r - D1;

  at::parallel_for(0, n, 2048, [&](int64_t p0, int64_t p1) {
    const float down = 1.0f / D1, up = static_cast<float>(D1);
    float f[D], el[D1], rem0[D1], bary[D1 + 1];
    int rank[D1];
    for (int64_t p = p0; p < p1; ++p) {
      feature(p, f);
      float sm = 0.0f;
      for (int j = D; j > 0; --j) {
        const float cf = f[j - 1] * scale[j - 1];
        el[j] = sm - static_cast<float>(j) * cf;
        sm += cf;
      }
      el[0] = sm;
      float sum = 0.0f;
      for (int i = 0; i <= D; ++i) {
        const float v = std::nearbyint(down * el[i]);
        rem0[i] = v * up;
        sum += v;
      }
      for (int i = 0; i <= D; ++i) rank[i] = 0;
      for (int i = 0; i < D; ++i) {
        const float di = el[i] - rem0[i];
        for (int j = i + 1; j <= D; ++j) {
          if (di < el[j] - rem0[j])
            ++rank[i];
          else
            ++rank[j];
        }
      }
      const int isum = static_cast<int>(sum);
      for (int i = 0; i <= D; ++i) {
        rank[i] += isum;
        if (rank[i] < 0) {
          rank[i] += D1;
          rem0[i] += up;
        } else if (rank[i] >= D1) {
          rank[i] -= D1;
          rem0[i] -= up;
        }
      }
      for (int i = 0; i <= D1; ++i) bary[i] = 0.0f;
      for (int i = 0; i <= D; ++i) {
        const float v = (el[i] - rem0[i]) * down;
        bary[D - rank[i]] += v;
        bary[D - rank[i] + 1] -= v;
      }
      bary[0] += 1.0f + bary[D1];
      for (int r = 0; r <= D; ++r) {
        int32_t* k = keys.get() + (p * D1 + r) * D;
        for (int i = 0; i < D; ++i) k[i] = static_cast<int32_t>(rem0[i]) + canonical[r][rank[i]];
        lat.weight[p * D1 + r] = bary[r];
      }
    }
  });

  // Vertex ids in first-seen order (sequential: ids must not depend on the threads).
  // Neighbouring pixels mostly lie in the same simplex: a corner whose key is the previous
  // point's key of the same corner takes that vertex without a hash lookup (the same id
  // the lookup would give; the order of first sightings is unchanged).
  lattice_detail::KeyTable<D> table(n);
  for (int64_t p = 0; p < n; ++p)
    for (int r = 0; r <= D; ++r) {
      const int64_t e = p * D1 + r;
      const int32_t* k = keys.get() + e * D;
      if (p > 0 && std::equal(k, k + D, k - D1 * D)) {
        lat.offset[e] = lat.offset[e - D1];
        continue;
      }
      lat.offset[e] = table.insert(k) + 1;
    }
  lat.m = table.size();
  TORCH_CHECK(lat.m < INT32_MAX, "dense_crf: the lattice has too many vertices (", lat.m, ")");

  lat.nbr.resize(static_cast<size_t>(D1) * lat.m * 2);
  at::parallel_for(0, lat.m, 1024, [&](int64_t v0, int64_t v1) {
    int32_t n1[D], n2[D];
    for (int64_t v = v0; v < v1; ++v) {
      const int32_t* k = table.key(v);
      for (int j = 0; j <= D; ++j) {
        for (int i = 0; i < D; ++i) {
          n1[i] = k[i] - 1;
          n2[i] = k[i] + 1;
        }
        if (j < D) {
          n1[j] = k[j] + D;
          n2[j] = k[j] - D;
        }
        int32_t* out = lat.nbr.data() + (static_cast<int64_t>(j) * lat.m + v) * 2;
        out[0] = table.find(n1) + 1;
        out[1] = table.find(n2) + 1;
      }
    }
  });

  return lat;
}

// One channel through the lattice with the library's arithmetic (for the normalisations):
// splat w * in[p] in raster order, blur along axes 0..D (v + 0.5 (left + right)), slice
// out[p] = sum_r (w_r * value_r) * alpha in corner order.
template <int D>
void filter_channel(const Lattice<D>& lat, const float* in, float* out) {
  constexpr int D1 = D + 1;
  std::vector<float> a(lat.m + 1, 0.0f), b(lat.m + 1, 0.0f);
  for (int64_t p = 0; p < lat.n; ++p)
    for (int r = 0; r <= D; ++r) a[lat.offset[p * D1 + r]] += lat.weight[p * D1 + r] * in[p];
  a[0] = 0.0f;  // (never written: every corner is a vertex)
  for (int j = 0; j <= D; ++j) {
    const int32_t* nb = lat.nbr.data() + static_cast<int64_t>(j) * lat.m * 2;
    at::parallel_for(0, lat.m, 4096, [&](int64_t v0, int64_t v1) {
      for (int64_t v = v0; v < v1; ++v) b[v + 1] = a[v + 1] + 0.5f * (a[nb[2 * v]] + a[nb[2 * v + 1]]);
    });
    std::swap(a, b);
  }
  const float alpha = Lattice<D>::alpha();
  at::parallel_for(0, lat.n, 2048, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float s = 0.0f;
      for (int r = 0; r <= D; ++r) s += lat.weight[p * D1 + r] * a[lat.offset[p * D1 + r]] * alpha;
      out[p] = s;
    }
  });
}

}  // namespace unsam::ops::cpu
