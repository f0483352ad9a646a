// unsam::graph_segment and unsam::merge_graph — pixel-accurate atoms and their
// full merge hierarchy (the superpixel conquer stage, unsam/atoms.py).
//
// graph_segment(image [H, W, C] float32, ks, min_size) -> labels [S, H, W] int64 (one per k)
//   Felzenszwalb–Huttenlocher graph segmentation (IJCV 2004) with union-find:
//   8-neighbour edges weighted by the Euclidean distance of the pixel vectors,
//   taken in increasing weight (ties: raster order of the edge); two components
//   join when the edge weight is <= min(Int(C) + k / |C|) of both. Then
//   components smaller than min_size join their neighbour across the lightest
//   edge (same order). Labels are 0..n-1 in raster order of first pixel.
//
// merge_graph(hist [N, B] float32, feats [N, C] float32 or None, area [N] float64,
//             boxes [N, 4] int64 or None, edges [E, 2] int64,
//             w_hist, w_feat, w_size, w_fill) -> (merges [M, 2] int64, sims [M] float64)
//   Greedy agglomeration of a region adjacency graph to the end (a dendrogram,
//   as scipy's linkage: merge i creates node N + i from merges[i] = (a, b)).
//   similarity(a, b) = w_hist * sum_k min(h_a[k] / |h_a|, h_b[k] / |h_b|)   (histogram intersection)
//                    + w_feat * cos(f_a, f_b)                              (summed features)
//                    + w_size * (1 - (area_a + area_b) / A)                (small first)
//                    + w_fill * (1 - (box(a u b) - area_a - area_b) / A)   (fit each other)
//   A = sum of area; histograms, features, areas add up and boxes unite on a merge
//   (Selective Search's grouping, Uijlings et al. IJCV 2013, plus UnSAM's cosine).
//   The most similar adjacent pair merges first; ties: smallest (a, b), a < b.
//   M = N - (number of connected components).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "ops/common.h"

namespace unsam::ops {

at::Tensor graph_segment_cpu(const at::Tensor& image, at::ArrayRef<double> ks, int64_t min_size);

std::tuple<at::Tensor, at::Tensor> merge_graph_cpu(const at::Tensor& hist,
                                                   const std::optional<at::Tensor>& feats,
                                                   const at::Tensor& area,
                                                   const std::optional<at::Tensor>& boxes,
                                                   const at::Tensor& edges, double w_hist,
                                                   double w_feat, double w_size, double w_fill);

}  // namespace unsam::ops
