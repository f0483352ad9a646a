// CUDA kernel of unsam::merge_levels: exact greedy agglomeration, one block
// per region, regions in parallel.
//
// Must give labels bit-identical to the CPU kernel (cpu/merge_kernel.cpp).
// What makes that hold:
//  * The merge order is a function of the state only: the next merge is the
//    live adjacent pair with the highest similarity, then the smallest (a, b).
//    Every live pair has exactly one live heap entry (its endpoints' versions
//    match), so any priority queue with lazy deletion pops the same pair as
//    the CPU's std::priority_queue, whatever its internal layout.
//  * Similarities are computed in exactly the arithmetic of ops::merge_dot8
//    and ops::merge_similarity (this file may not include merge.h, it pulls in
//    ATen): lane k of an 8-lane group accumulates channels k, k+8, ... in
//    increasing order, the 8 partial sums are combined as
//    ((a0+a1)+(a2+a3))+((a4+a5)+(a6+a7)) (the xor butterfly produces exactly
//    that tree on lane 0; IEEE addition is commutative, so the other lanes
//    agree), with explicit _rn intrinsics so nothing is contracted into an
//    FMA (CMake also passes --fmad=false). double division and __dsqrt_rn are
//    correctly rounded, as on the CPU.
//
// Per merge a block runs three phases separated by __syncthreads:
//  pop   (thread 0) pop stale entries until the best live pair (a, b);
//  1     all threads: sums[a] += sums[b]; scan the pair's bounding box,
//        relabel b's patches to a and collect neighbour clusters through the
//        4-neighbour pixel edges (deduplicated by a per-cluster stamp);
//  2     8-lane groups: |sums[a]|^2 and sums[a] . sums[q] per neighbour q;
//  push  (thread 0) similarities and heap pushes.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "ops/cuda/launchers.h"

namespace unsam::cuda {

namespace {

constexpr int kMergeThreads = 128;
constexpr int kMergeGroups = kMergeThreads / 8;  // 8-lane dot-product groups
// Static shared memory of merge_levels_kernel, kept free of the dynamic heap.
constexpr int64_t kMergeStaticSharedReserve = 1024;

struct MergeHeapEntry {
  double sim;
  int32_t a, b;     // cluster ids, a < b
  uint32_t va, vb;  // versions of a and b when pushed
};
static_assert(sizeof(MergeHeapEntry) == 24, "MergeHeapEntry should pack to 24 bytes");

// Byte offsets of one region's workspace arrays.
struct MergeLayout {
  int64_t sums, norm2, dots, heap, label, ver, stamp, box, nbrs, total;
};

__host__ __device__ inline int64_t merge_align256(int64_t x) {
  return (x + 255) & ~int64_t{255};
}

__host__ __device__ inline MergeLayout merge_layout(int64_t n, int64_t c, int64_t cap,
                                                    bool heap_in_shared) {
  MergeLayout l{};
  int64_t o = 0;
  l.sums = o;  o = merge_align256(o + n * c * 8);   // float64 representatives
  l.norm2 = o; o = merge_align256(o + n * 8);       // |sum|^2 per cluster
  l.dots = o;  o = merge_align256(o + (n + 1) * 8); // phase-2 results
  l.heap = o;  o = merge_align256(o + (heap_in_shared ? 0 : cap * int64_t{sizeof(MergeHeapEntry)}));
  l.label = o; o = merge_align256(o + n * 4);       // cluster id per patch, -1 invalid
  l.ver = o;   o = merge_align256(o + n * 4);       // version per cluster id
  l.stamp = o; o = merge_align256(o + n * 4);       // neighbour dedupe per cluster id
  l.box = o;   o = merge_align256(o + n * 16);      // y0, y1, x0, x1 per cluster id
  l.nbrs = o;  o = merge_align256(o + n * 4);       // neighbours of the merged cluster
  l.total = o;
  return l;
}

// The capacity covers the worst case without ever overflowing: clusters are
// connected sets of the 4-neighbour grid, so the cluster adjacency graph is a
// minor of a planar graph, planar itself, with at most 3n edges; live entries
// are one per adjacent pair, so compacting a full heap always frees >= n + 16
// slots, and compaction (O(capacity)) is amortised over that many pushes.
__host__ __device__ inline int64_t merge_heap_capacity(int64_t n) { return 4 * n + 16; }

// x pops before y: higher similarity, then the smaller (a, b) — the reverse of
// the CPU's MergeEdgeLess, including its treatment of -0.0 == 0.0.
__device__ __forceinline__ bool merge_entry_before(const MergeHeapEntry& x,
                                                   const MergeHeapEntry& y) {
  if (x.sim != y.sim) return x.sim > y.sim;
  if (x.a != y.a) return x.a < y.a;
  return x.b < y.b;
}

// Alive cluster ids are exactly those whose own patch still carries its id
// (id = smallest member patch; a merged-away id b has label[b] = a < b).
__device__ __forceinline__ bool merge_entry_live(const MergeHeapEntry& e, const int32_t* label,
                                                 const uint32_t* ver) {
  return label[e.a] == e.a && label[e.b] == e.b && ver[e.a] == e.va && ver[e.b] == e.vb;
}

__device__ __forceinline__ void merge_heap_sift_down(MergeHeapEntry* heap, int64_t size, int64_t i,
                                     MergeHeapEntry e) {
  for (;;) {
    int64_t child = 2 * i + 1;
    if (child >= size) break;
    if (child + 1 < size && merge_entry_before(heap[child + 1], heap[child])) ++child;
    if (!merge_entry_before(heap[child], e)) break;
    heap[i] = heap[child];
    i = child;
  }
  heap[i] = e;
}

__device__ __forceinline__ void merge_heap_make(MergeHeapEntry* heap, int64_t size) {
  for (int64_t i = size / 2 - 1; i >= 0; --i) merge_heap_sift_down(heap, size, i, heap[i]);
}

__device__ __forceinline__ void merge_heap_pop(MergeHeapEntry* heap, int64_t& size) {
  --size;
  if (size > 0) merge_heap_sift_down(heap, size, 0, heap[size]);
}

__device__ __forceinline__ void merge_heap_push(MergeHeapEntry* heap, int64_t& size, int64_t cap,
                                MergeHeapEntry e, const int32_t* label,
                                const uint32_t* ver) {
  if (size == cap) {
    // Drop stale entries and rebuild; see merge_heap_capacity for the bound.
    int64_t j = 0;
    for (int64_t i = 0; i < size; ++i) {
      if (merge_entry_live(heap[i], label, ver)) heap[j++] = heap[i];
    }
    size = j;
    merge_heap_make(heap, size);
    // Unreachable by the planarity bound; a silently dropped edge would give
    // wrong labels, so fail loudly instead.
    if (size == cap) __trap();
  }
  int64_t i = size++;
  while (i > 0) {
    const int64_t parent = (i - 1) / 2;
    if (!merge_entry_before(e, heap[parent])) break;
    heap[i] = heap[parent];
    i = parent;
  }
  heap[i] = e;
}

// ops::merge_dot8 by an 8-lane group (k = lane in group, mask = the group's
// lanes); every lane of the group returns the same value.
//
// The loads of 8 steps are issued before their products are summed: the sums
// live in global memory (6 MB per 32 x 32 x 768 region, far beyond L2 with a
// few hundred regions in flight), so one load at a time left each dot product
// ~96 memory round trips long, and phase 2 (one dot per neighbour) dominated
// every merge. The additions still run one by one in channel order, so the
// result is bit-identical to the plain loop.
__device__ __forceinline__ double merge_dot8_group(const double* x, const double* y, int64_t c,
                                                   int k, unsigned mask) {
  constexpr int kSteps = 8;
  double acc = 0.0;
  int64_t i = k;
  for (; i + 8 * (kSteps - 1) < c; i += 8 * kSteps) {
    double xv[kSteps], yv[kSteps];
#pragma unroll
    for (int j = 0; j < kSteps; ++j) {
      xv[j] = x[i + 8 * j];
      yv[j] = y[i + 8 * j];
    }
#pragma unroll
    for (int j = 0; j < kSteps; ++j) acc = __dadd_rn(acc, __dmul_rn(xv[j], yv[j]));
  }
  for (; i < c; i += 8) acc = __dadd_rn(acc, __dmul_rn(x[i], y[i]));
  acc = __dadd_rn(acc, __shfl_xor_sync(mask, acc, 1));  // a0+a1, a2+a3, a4+a5, a6+a7
  acc = __dadd_rn(acc, __shfl_xor_sync(mask, acc, 2));  // (a0+a1)+(a2+a3), (a4+a5)+(a6+a7)
  acc = __dadd_rn(acc, __shfl_xor_sync(mask, acc, 4));  // the two halves
  return acc;
}

// ops::merge_similarity.
__device__ __forceinline__ double merge_similarity_dev(double dot, double na2, double nb2) {
  const double den = __dmul_rn(na2, nb2);
  return den > 0.0 ? __ddiv_rn(dot, __dsqrt_rn(den)) : 0.0;
}

// Records cluster lq as a neighbour of the merged pair (a, b), once per merge
// (tick): the first thread to stamp lq appends it.
__device__ __forceinline__ void merge_visit_neighbour(int32_t lq, int32_t a, int32_t b,
                                                      int32_t tick, int32_t* stamp,
                                                      int32_t* nbrs, int32_t* count) {
  if (lq < 0 || lq == a || lq == b) return;
  if (atomicExch(stamp + lq, tick) != tick) nbrs[atomicAdd(count, 1)] = lq;
}

__global__ void __launch_bounds__(kMergeThreads)
    merge_levels_kernel(const float* __restrict__ feats, const bool* __restrict__ valid,
                        const double* __restrict__ thresholds, int64_t levels, int64_t region0,
                        int64_t h, int64_t w, int64_t c, int64_t heap_capacity,
                        bool heap_in_shared, unsigned char* __restrict__ workspace,
                        int64_t workspace_stride, int64_t* __restrict__ labels) {
  extern __shared__ __align__(16) unsigned char merge_smem[];
  __shared__ int32_t s_a, s_b, s_nnbr;
  __shared__ int32_t s_box[4];

  const int64_t n = h * w;
  const int64_t region = region0 + blockIdx.x;
  const int tid = threadIdx.x;
  const int group = tid >> 3;
  const int k = tid & 7;
  const unsigned gmask = 0xffu << ((tid & 31) & ~7);

  unsigned char* ws = workspace + static_cast<int64_t>(blockIdx.x) * workspace_stride;
  const MergeLayout lay = merge_layout(n, c, heap_capacity, heap_in_shared);
  double* sums = reinterpret_cast<double*>(ws + lay.sums);
  double* norm2 = reinterpret_cast<double*>(ws + lay.norm2);
  double* dots = reinterpret_cast<double*>(ws + lay.dots);
  int32_t* label = reinterpret_cast<int32_t*>(ws + lay.label);
  uint32_t* ver = reinterpret_cast<uint32_t*>(ws + lay.ver);
  int32_t* stamp = reinterpret_cast<int32_t*>(ws + lay.stamp);
  int32_t* box = reinterpret_cast<int32_t*>(ws + lay.box);
  int32_t* nbrs = reinterpret_cast<int32_t*>(ws + lay.nbrs);
  MergeHeapEntry* heap = heap_in_shared ? reinterpret_cast<MergeHeapEntry*>(merge_smem)
                                        : reinterpret_cast<MergeHeapEntry*>(ws + lay.heap);

  const float* f = feats + region * n * c;
  const bool* v = valid == nullptr ? nullptr : valid + region * n;
  int64_t* out = labels + region * levels * n;

  // ---- every valid patch is a cluster
  for (int64_t p = tid; p < n; p += kMergeThreads) {
    const bool ok = v == nullptr || v[p];
    label[p] = ok ? static_cast<int32_t>(p) : -1;
    ver[p] = 0;
    stamp[p] = 0;  // merge ticks start at 1
    const int32_t y = static_cast<int32_t>(p / w);
    const int32_t x = static_cast<int32_t>(p - static_cast<int64_t>(y) * w);
    box[4 * p + 0] = y;
    box[4 * p + 1] = y;
    box[4 * p + 2] = x;
    box[4 * p + 3] = x;
  }
  // Exact float -> double; invalid patches' sums are copied too but never read.
  for (int64_t i = tid; i < n * c; i += kMergeThreads) sums[i] = static_cast<double>(f[i]);
  __syncthreads();
  for (int64_t p = group; p < n; p += kMergeGroups) {
    if (label[p] < 0) continue;  // uniform across the group
    const double d = merge_dot8_group(sums + p * c, sums + p * c, c, k, gmask);
    if (k == 0) norm2[p] = d;
  }
  __syncthreads();
  // ---- grid edges (right, down) into heap slots 2p, 2p + 1; a = -1 marks none
  for (int64_t e = group; e < 2 * n; e += kMergeGroups) {
    const int64_t p = e >> 1;
    const int64_t y = p / w, x = p - y * w;
    int64_t q = -1;
    if (label[p] >= 0) {
      if ((e & 1) == 0) {
        if (x + 1 < w) q = p + 1;
      } else if (y + 1 < h) {
        q = p + w;
      }
      if (q >= 0 && label[q] < 0) q = -1;
    }
    MergeHeapEntry ent{0.0, -1, -1, 0u, 0u};
    if (q >= 0) {
      const double d = merge_dot8_group(sums + p * c, sums + q * c, c, k, gmask);
      ent.sim = merge_similarity_dev(d, norm2[p], norm2[q]);
      ent.a = static_cast<int32_t>(p);
      ent.b = static_cast<int32_t>(q);
    }
    if (k == 0) heap[e] = ent;
  }
  __syncthreads();
  // From here on only thread 0 touches the heap, so heap_size lives in its
  // registers (other threads' copies are unused).
  int64_t heap_size = 0;
  if (tid == 0) {
    for (int64_t e = 0; e < 2 * n; ++e) {
      if (heap[e].a >= 0) heap[heap_size++] = heap[e];
    }
    merge_heap_make(heap, heap_size);
  }

  int32_t tick = 0;
  for (int64_t l = 0; l < levels; ++l) {
    for (;;) {
      // ---- pop: the best live pair at or above the threshold, if any
      if (tid == 0) {
        const double theta = thresholds[l];
        int32_t a = -1, b = -1;
        while (heap_size > 0) {
          const MergeHeapEntry top = heap[0];
          if (!(top.sim >= theta)) break;
          merge_heap_pop(heap, heap_size);
          if (!merge_entry_live(top, label, ver)) continue;
          a = top.a;
          b = top.b;
          break;
        }
        s_a = a;
        s_b = b;
        s_nnbr = 0;
        if (a >= 0) {
          // b merges into a (a < b keeps the id = smallest member patch).
          int32_t* ba = box + 4 * static_cast<int64_t>(a);
          const int32_t* bb = box + 4 * static_cast<int64_t>(b);
          ba[0] = min(ba[0], bb[0]);
          ba[1] = max(ba[1], bb[1]);
          ba[2] = min(ba[2], bb[2]);
          ba[3] = max(ba[3], bb[3]);
          for (int i = 0; i < 4; ++i) s_box[i] = ba[i];
          ++ver[a];
          ++ver[b];
        }
      }
      __syncthreads();
      const int32_t a = s_a;
      const int32_t b = s_b;
      if (a < 0) break;  // uniform: every thread read the same s_a
      ++tick;

      // ---- phase 1: representative, relabel, neighbours
      double* sa = sums + static_cast<int64_t>(a) * c;
      const double* sb = sums + static_cast<int64_t>(b) * c;
      for (int64_t i = tid; i < c; i += kMergeThreads) sa[i] = __dadd_rn(sa[i], sb[i]);
      const int32_t y0 = s_box[0], y1 = s_box[1], x0 = s_box[2], x1 = s_box[3];
      const int32_t bw = x1 - x0 + 1;
      const int32_t area = (y1 - y0 + 1) * bw;  // <= n <= 2^30
      for (int32_t i = tid; i < area; i += kMergeThreads) {
        const int32_t y = y0 + i / bw;
        const int32_t x = x0 + i % bw;
        const int64_t p = static_cast<int64_t>(y) * w + x;
        const int32_t lp = label[p];
        if (lp != a && lp != b) continue;
        if (lp == b) label[p] = a;
        // Another thread may be relabelling a neighbour from b to a right
        // now; it reads as a or b, both excluded, so the race is benign.
        if (y > 0) merge_visit_neighbour(label[p - w], a, b, tick, stamp, nbrs, &s_nnbr);
        if (y + 1 < h) merge_visit_neighbour(label[p + w], a, b, tick, stamp, nbrs, &s_nnbr);
        if (x > 0) merge_visit_neighbour(label[p - 1], a, b, tick, stamp, nbrs, &s_nnbr);
        if (x + 1 < w) merge_visit_neighbour(label[p + 1], a, b, tick, stamp, nbrs, &s_nnbr);
      }
      __syncthreads();

      // ---- phase 2: task 0 = |sums[a]|^2, task t = sums[a] . sums[nbrs[t - 1]]
      const int32_t nn = s_nnbr;
      for (int32_t t = group; t <= nn; t += kMergeGroups) {
        const double* other = t == 0 ? sa : sums + static_cast<int64_t>(nbrs[t - 1]) * c;
        const double d = merge_dot8_group(sa, other, c, k, gmask);
        if (k == 0) dots[t] = d;
      }
      __syncthreads();

      // ---- push (thread 0). The neighbour order in nbrs depends on atomics,
      // but the heap's pop order does not depend on push order.
      if (tid == 0) {
        const double na2 = dots[0];
        norm2[a] = na2;
        for (int32_t i = 0; i < nn; ++i) {
          const int32_t q = nbrs[i];
          MergeHeapEntry e;
          e.sim = merge_similarity_dev(dots[i + 1], na2, norm2[q]);
          e.a = min(a, q);
          e.b = max(a, q);
          e.va = ver[e.a];
          e.vb = ver[e.b];
          merge_heap_push(heap, heap_size, heap_capacity, e, label, ver);
        }
      }
      // No barrier here: the next pop is thread 0's as well, and the barrier
      // after it orders these writes before any other thread's reads.
    }
    for (int64_t p = tid; p < n; p += kMergeThreads) out[l * n + p] = label[p];
    // Every thread must have read s_a before thread 0 pops for the next level.
    __syncthreads();
  }
}

}  // namespace

cudaError_t merge_levels_plan(int64_t h, int64_t w, int64_t c, int device,
                              MergeLevelsPlan* plan) {
  const int64_t n = h * w;
  const int64_t cap = merge_heap_capacity(n);
  int optin = 0;
  const cudaError_t err =
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  // The heap is the only structure thread 0 walks serially (log-depth chains
  // of dependent loads per pop), so it goes to shared memory when it fits
  // (32 x 32 regions: 99 KB); larger regions keep it in global memory.
  const int64_t heap_bytes = cap * int64_t{sizeof(MergeHeapEntry)};
  plan->heap_capacity = cap;
  plan->heap_in_shared = heap_bytes + kMergeStaticSharedReserve <= optin;
  plan->shared_bytes = plan->heap_in_shared ? heap_bytes : 0;
  plan->workspace_bytes_per_region = merge_layout(n, c, cap, plan->heap_in_shared).total;
  return cudaSuccess;
}

cudaError_t merge_levels_launch(const float* feats, const bool* valid, const double* thresholds,
                                int64_t levels, int64_t regions, int64_t h, int64_t w, int64_t c,
                                const MergeLevelsPlan& plan, void* workspace,
                                int64_t workspace_regions, int64_t* labels, cudaStream_t stream) {
  if (regions <= 0 || h * w <= 0 || levels <= 0) return cudaSuccess;
  if (workspace_regions <= 0 || plan.heap_capacity != merge_heap_capacity(h * w)) {
    return cudaErrorInvalidValue;
  }
  if (plan.shared_bytes > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(merge_levels_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(plan.shared_bytes));
    if (err != cudaSuccess) return err;
  }
  // Chunks share the workspace; launches on one stream run in order.
  for (int64_t r0 = 0; r0 < regions; r0 += workspace_regions) {
    const int64_t count = std::min(workspace_regions, regions - r0);
    merge_levels_kernel<<<static_cast<unsigned>(count), kMergeThreads,
                          static_cast<size_t>(plan.shared_bytes), stream>>>(
        feats, valid, thresholds, levels, r0, h, w, c, plan.heap_capacity, plan.heap_in_shared,
        static_cast<unsigned char*>(workspace), plan.workspace_bytes_per_region, labels);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace unsam::cuda
